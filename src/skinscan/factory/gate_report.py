"""Measure the "cannot assess" gate of a model package: who it turns away, and why.

The sets, each through the real runtime path (`Classifier.classify_batch`: decode, the "too small"
check, the graph's `assess` scores, the package's thresholds):
- the lesions of a split part (test by default): the share turned away must stay small (goal <= 2%);
- with `external`, the external collection (the ISIC 2017-era 256-px images of the ISIC 2019 extra folder,
  which no fit reads): dermoscopy from other devices and clinics (goal <= 5% turned away);
- the non-lesion corpus (`skinscan.factory.nonlesion`): real images nobody here made (goal >= 95% turned away);
- ordinary photos of skin from the held-out portrait (`skinscan.factory.nonlesion.ordinary_skin_photos`): how many
  are answered `not_dermoscopic`, and how many are refused at all;
- synthetic degradations of the same lesions (blur, dark, overexposed, tiny, and "84 px and back": another
  device's low resolution, which should pass): what a phone gets wrong.

Writes `gate.json` into the package folder; `skinscan card` puts the figures in the model card. Torch-free.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

from skinscan.factory.data import image_paths, read_split, split_image_paths
from skinscan.runtime.classifier import Classifier
from skinscan.runtime.preprocess import load_image

GOALS = {"lesions_rejected_at_most": 0.02, "external_rejected_at_most": 0.05, "non_lesions_rejected_at_least": 0.95}
LOW_RESOLUTION = "84 px and back (shorter side 84 px, scaled back up)"


def low_resolution(image: Image.Image, side: int = 84) -> Image.Image:
    """The image as a low-resolution device gives it, scaled back to its size (the gate sees the same size)."""
    scale = side / min(image.size)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.BILINEAR)



DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "blur (Gaussian, radius 2 px)": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "blur (Gaussian, radius 4 px)": lambda image: image.filter(ImageFilter.GaussianBlur(4)),
    "dark (brightness x0.3)": lambda image: ImageEnhance.Brightness(image).enhance(0.3),
    "dark (brightness x0.15)": lambda image: ImageEnhance.Brightness(image).enhance(0.15),
    "overexposed (brightness x2)": lambda image: ImageEnhance.Brightness(image).enhance(2.0),
    "overexposed (brightness x3)": lambda image: ImageEnhance.Brightness(image).enhance(3.0),
    "tiny (shorter side 64 px)": lambda image: image.resize((round(64 * image.width / image.height), 64)),
    LOW_RESOLUTION: low_resolution,
}
# The external collection gets the two that tell "another device" from "a bad photo".
EXTERNAL_DEGRADATIONS = ("blur (Gaussian, radius 2 px)", LOW_RESOLUTION)
ORDINARY_SKIN_PHOTOS = 100


def _summary(predictions) -> dict:
    reasons = Counter(p.cannot_assess for p in predictions if not p.assessable)
    rejected = sum(reasons.values())
    return {"images": len(predictions), "rejected": rejected, "rejected_share": rejected / max(1, len(predictions)),
            "reasons": dict(sorted(reasons.items()))}


@dataclass
class GateInputs:
    """The three sets, decoded (and degraded) once, whatever the number of models measured on them."""

    part: str
    rows: pd.DataFrame  # the split's rows of `part`, in the order of `lesions`
    lesions: list[Image.Image]
    corpus: list  # skinscan.factory.nonlesion.NonLesionImage
    degraded: dict[str, list[Image.Image]]
    ordinary: list  # skinscan.factory.nonlesion.NonLesionImage: ordinary photos of skin (held-out portrait)
    external: pd.DataFrame | None = None  # the external collection's metadata rows, in the order of `external_images`
    external_images: list[Image.Image] | None = None
    external_degraded: dict[str, list[Image.Image]] | None = None
    fresh: list | None = None  # a second non-lesion set nobody fitted on or chose a design with (NonLesionImage)


def _spread(images: list, count: int) -> list:
    """`count` images spread evenly over the list (all when count is 0 or covers it): a cheaper measurement."""
    if not count or count >= len(images):
        return images
    return [images[i] for i in np.linspace(0, len(images) - 1, count).round().astype(int)]


def load_gate_inputs(data_dir: str | Path, split_csv: str | Path, part: str = "test",
                     max_images: int = 0, external: str | Path | None = None, degraded: int = 0,
                     fresh_non_lesions: str | Path | None = None) -> GateInputs:
    """Decode the lesions of `part` (the first `max_images` if set), build the non-lesion corpus, the ordinary
    photos of skin and the degradations; with `external` (the ISIC 2019 extra folder) its external collection."""
    from skinscan.factory.nonlesion import ORDINARY_SKIN_HELD_OUT, non_lesion_corpus, ordinary_skin_photos

    split = read_split(split_csv)
    rows = split[split.split == part]
    if max_images:
        rows = rows.head(max_images)
    lesions = [load_image(path) for path in tqdm(split_image_paths(data_dir, split_csv, rows), desc=f"decode {part}",
                                                 unit="img", leave=False)]
    degraded_lesions = {name: [degrade(image) for image in _spread(lesions, degraded)]
                        for name, degrade in tqdm(DEGRADATIONS.items(), desc="degradations", leave=False)}
    ordinary = ordinary_skin_photos(ORDINARY_SKIN_HELD_OUT, ORDINARY_SKIN_PHOTOS, seed=1)
    inputs = GateInputs(part, rows, lesions, non_lesion_corpus(), degraded_lesions, ordinary)
    if fresh_non_lesions is not None:
        from skinscan.factory.nonlesion import folder_corpus

        inputs.fresh = folder_corpus(fresh_non_lesions)
        if not inputs.fresh:
            raise FileNotFoundError(f"{fresh_non_lesions}: no readable .jpg or .png images in it")
    if external is not None:
        from skinscan.factory.regate import external_rows

        inputs.external = external_rows(external)
        if max_images:
            inputs.external = inputs.external.head(max_images)
        paths = image_paths(Path(external) / "images", inputs.external.image_id.tolist())
        inputs.external_images = [load_image(path) for path in tqdm(paths, desc="decode external", leave=False)]
        inputs.external_degraded = {name: [DEGRADATIONS[name](image)
                                           for image in _spread(inputs.external_images, degraded)]
                                    for name in EXTERNAL_DEGRADATIONS}
    return inputs


def measure_gate(classifier: Classifier, inputs: GateInputs, batch_size: int = 32) -> dict:
    """Run the three sets through `classifier`; a JSON-friendly report with per-group rates."""
    _require_gate(classifier)
    rows, corpus = inputs.rows, inputs.corpus
    lesion_predictions = classifier.classify_batch(inputs.lesions, batch_size, sources=rows.image_id.tolist())
    by_diagnosis = {dx: _summary([p for p, d in zip(lesion_predictions, rows.dx, strict=True) if d == dx])
                    for dx in sorted(rows.dx.unique())}

    corpus_predictions = classifier.classify_batch([item.image for item in corpus], batch_size,
                                                   sources=[item.name for item in corpus])
    groups = {group: _summary([p for p, item in zip(corpus_predictions, corpus, strict=True) if item.group == group])
              for group in dict.fromkeys(item.group for item in corpus)}
    accepted = [f"{item.group}: {item.name}" for p, item in zip(corpus_predictions, corpus, strict=True)
                if p.assessable]

    degradations = {name: _summary(classifier.classify_batch(images, batch_size))
                    for name, images in inputs.degraded.items()}

    ordinary = _summary(classifier.classify_batch([item.image for item in inputs.ordinary], batch_size))
    ordinary["not_dermoscopic_share"] = ordinary["reasons"].get("not_dermoscopic", 0) / max(1, ordinary["images"])
    lesion_summary = _summary(lesion_predictions)
    corpus_summary = _summary(corpus_predictions)
    external = {}
    if inputs.external_images is not None:
        external_predictions = classifier.classify_batch(inputs.external_images, batch_size,
                                                         sources=inputs.external.image_id.tolist())
        external = {"external": {
            **_summary(external_predictions),
            "by_collection": {c: _summary([p for p, k in zip(external_predictions, inputs.external.collection,
                                                             strict=True) if k == c])
                              for c in sorted(inputs.external.collection.unique())},
            "degradations": {name: _summary(classifier.classify_batch(images, batch_size))
                             for name, images in inputs.external_degraded.items()}}}
    fresh = {}
    if inputs.fresh:
        fresh_predictions = classifier.classify_batch([item.image for item in inputs.fresh], batch_size,
                                                      sources=[item.name for item in inputs.fresh])
        fresh["fresh_non_lesions"] = {**_summary(fresh_predictions), "accepted": [
            item.name for p, item in zip(fresh_predictions, inputs.fresh, strict=True) if p.assessable]}
    goals_met = {"lesions": lesion_summary["rejected_share"] <= GOALS["lesions_rejected_at_most"],
                 "non_lesions": corpus_summary["rejected_share"] >= GOALS["non_lesions_rejected_at_least"]}
    if external:
        goals_met["external"] = external["external"]["rejected_share"] <= GOALS["external_rejected_at_most"]
    return {
        "model": str(classifier.path), "precision": classifier.precision, "part": inputs.part,
        "thresholds": classifier.metadata["skinscan.assess"],
        "lesions": {**lesion_summary, "by_diagnosis": by_diagnosis},
        "non_lesions": {**corpus_summary, "groups": groups, "accepted": accepted},
        **external,
        **fresh,
        "ordinary_skin_photos": ordinary,
        "degradations": degradations,
        "goals": GOALS,
        "goals_met": goals_met,
        "median_scores": {"lesions": _median_scores(lesion_predictions),
                          "non_lesions": _median_scores(corpus_predictions)},
    }


def _require_gate(classifier: Classifier) -> None:
    if not classifier.has_assess:
        raise ValueError(f"{classifier.path} has no 'cannot assess' gate (no `assess` output); re-export it")


def _median_scores(predictions) -> dict[str, float]:
    scores = [p.assessment for p in predictions if p.assessment]
    return {name: float(np.median([s[name] for s in scores])) for name in scores[0]} if scores else {}


def gate_report(package_dir: str | Path, data_dir: str | Path, split_csv: str | Path, part: str = "test",
                max_images: int = 0, threads: int | None = None, external: str | Path | None = None,
                degraded: int = 0, fresh_non_lesions: str | Path | None = None) -> dict:
    """Measure every precision in the package; write `gate.json` beside the models and return it.

    external: the ISIC 2019 extra folder (its external collection is measured too); degraded: degrade only
    this many lesions of each set, spread evenly (0: all), to keep a CPU run short; fresh_non_lesions: a folder
    of images measured as a second non-lesion set (`skinscan.factory.nonlesion.folder_corpus`).
    """
    from skinscan.runtime.classifier import FP32_FILE, INT8_FILE

    package_dir = Path(package_dir)
    classifiers = {precision: Classifier.load(package_dir, precision=precision, threads=threads)
                   for precision, file in (("fp32", FP32_FILE), ("int8", INT8_FILE)) if (package_dir / file).is_file()}
    for classifier in classifiers.values():  # refuse before decoding a thousand images
        if not classifier.has_assess:
            raise ValueError(f"{classifier.path} has no 'cannot assess' gate (no `assess` output); re-export it")
    if external is not None and not (Path(external) / "metadata.csv").is_file():
        raise ValueError(f"{external} has no metadata.csv: --external must be the ISIC 2019 extra folder")
    if fresh_non_lesions is not None and not Path(fresh_non_lesions).is_dir():
        raise ValueError(f"--fresh-non-lesions {fresh_non_lesions} is not a folder")
    inputs = load_gate_inputs(data_dir, split_csv, part, max_images, external, degraded, fresh_non_lesions)
    report = {precision: measure_gate(classifier, inputs) for precision, classifier in classifiers.items()}
    (package_dir / "gate.json").write_text(json.dumps(report, indent=2))
    return report


def format_gate_report(report: dict) -> str:
    """A few human lines per precision."""
    lines = []
    for precision, r in report.items():
        lesions, others = r["lesions"], r["non_lesions"]
        lines.append(f"{precision}: {lesions['rejected_share']:.1%} of {lesions['images']} {r['part']} lesions turned "
                     f"away (goal <= 2%), {others['rejected_share']:.1%} of {others['images']} non-lesion images "
                     f"(goal >= 95%)")
        if "external" in r:
            e = r["external"]
            lines.append(f"  external collection: {e['rejected_share']:.1%} of {e['images']} turned away (goal <= 5%) "
                         f"{e['reasons']}")
            for name, d in e["degradations"].items():
                lines.append(f"    external, {name}: {d['rejected_share']:.1%} turned away {d['reasons']}")
        for group, g in others["groups"].items():
            lines.append(f"  {group}: {g['rejected']}/{g['images']} turned away")
        if "fresh_non_lesions" in r:
            f = r["fresh_non_lesions"]
            lines.append(f"  fresh non-lesion set: {f['rejected']}/{f['images']} ({f['rejected_share']:.1%}) turned "
                         f"away {f['reasons']}")
        o = r["ordinary_skin_photos"]
        lines.append(f"  ordinary photos of skin (held-out portrait): {o['rejected']}/{o['images']} turned away, "
                     f"{o['not_dermoscopic_share']:.0%} as not_dermoscopic {o['reasons']}")
        for name, d in r["degradations"].items():
            lines.append(f"  {name}: {d['rejected_share']:.1%} turned away {d['reasons']}")
    return "\n".join(lines)
