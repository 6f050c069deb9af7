"""Score a model package (ONNX, no checkpoint) on one part of a split, per collection, with its gate.

Why: the shipped artefact is the package, and its INT8 model is what users run; checkpoint evaluation
(`skinscan.evaluate`) cannot score it, and a package shipped without its checkpoint (the bundled one) could
not be measured on the external collection at all. Inference is ONNX Runtime through
`skinscan.runtime.Classifier`, exactly as `skinscan predict` runs it (same decoding, the package's own
temperature, its "cannot assess" gate), so no torch is imported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax
from tqdm import tqdm

from skinscan import DISCLAIMER
from skinscan.factory.data import (
    DataSource,
    as_source,
    read_metadata,
    read_split,
    split_image_paths,
    split_with_metadata,
)
from skinscan.factory.metrics import expected_calibration_error
from skinscan.factory.report import write_evaluation_report
from skinscan.factory.sources import split_metadata
from skinscan.runtime.classifier import Classifier


def package_predictions(classifier: Classifier, paths: list[Path], batch_size: int = 32,
                        desc: str = "classify") -> tuple[np.ndarray, list[str | None]]:
    """Calibrated probabilities [N, K] and each image's "cannot assess" reason (None: assessed)."""
    probabilities, reasons = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", leave=False):
        chunk = paths[start:start + batch_size]
        decoded = [classifier.decode(path) for path in chunk]
        batch = classifier.classify_arrays(np.stack([array for array, _ in decoded]), [str(p) for p in chunk],
                                           [size for _, size in decoded])
        probabilities += [[p.probabilities[code] for code in classifier.labels] for p in batch]
        reasons += [p.cannot_assess for p in batch]
    return np.asarray(probabilities, dtype=np.float64).reshape(len(paths), len(classifier.labels)), reasons


def evaluate_package(model: str | Path | None, split_csv: str | Path, out_dir: str | Path, part: str = "test",
                     precision: str = "auto", data: str | Path | DataSource | None = None, threads: int | None = 1,
                     batch_size: int = 32, max_images: int = 0) -> dict:
    """Write metrics.json, report.md, plots and predictions.csv for the package on `part` of the split.

    `model` is a package folder (None: the bundled package). Images come from the split's sources (multi-source
    split) or from `data`. The report has the per-collection table whenever the split has a collection column;
    `metrics["gate"]` counts the gate's "cannot assess" answers by reason. `max_images` > 0 scores only the
    first N rows (smoke tests).
    """
    classifier = Classifier.load(model, precision=precision, threads=threads)
    split = read_split(split_csv)
    rows = split[split.split == part]
    if rows.empty:
        raise ValueError(f"{split_csv} has no {part!r} rows; its parts are {', '.join(sorted(set(split.split)))}")
    if max_images:
        rows = rows.head(max_images)
    unknown = sorted(set(rows.dx) - set(classifier.labels))
    if unknown:
        raise ValueError(f"the {part} part of {split_csv} has diagnoses {', '.join(unknown)} that the package "
                         f"({', '.join(classifier.labels)}) does not predict; score it on a split with its label set")
    if data is None and "source" not in rows.columns:
        raise ValueError(f"{split_csv} is a single-source split: say where its images are (--data or --images)")
    source = as_source(data) if data is not None else None
    paths = split_image_paths(source, split_csv, rows)
    probabilities, reasons = package_predictions(classifier, paths, batch_size, desc=f"classify {part}")
    y_true = np.array([classifier.labels.index(dx) for dx in rows.dx])
    metadata = rows.reset_index(drop=True)  # with each image's age, sex and site for the subgroup tables:
    if "source" in rows.columns:
        metadata = split_with_metadata(metadata, split_metadata(split_csv))
    elif source.metadata.is_file():
        metadata = split_with_metadata(metadata, read_metadata(source))
    out_dir = Path(out_dir)
    turned_away = [reason is not None for reason in reasons]
    metrics = write_evaluation_report(
        out_dir, y_true, probabilities, list(classifier.labels), metadata=metadata,
        title=f"skinscan evaluation: package {classifier.path} on the {part} part of {Path(split_csv).name}",
        malignant=classifier.malignant_codes, label_names=classifier.label_names,
        turned_away=turned_away if classifier.has_assess else None)
    metrics["package"] = {"path": str(classifier.path), "precision": classifier.precision,
                          "version": classifier.version}
    metrics["gate"] = ({"turned_away": int(sum(turned_away)), "n": len(reasons),
                        "by_reason": pd.Series([r for r in reasons if r]).value_counts().to_dict()}
                       if classifier.has_assess else None)
    metrics["part"] = part
    metrics["calibration"] = package_calibration(classifier, y_true, probabilities)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    predictions = pd.DataFrame(probabilities, columns=list(classifier.labels))
    predictions.insert(0, "cannot_assess", [reason or "" for reason in reasons])
    predictions.insert(0, "true", rows.dx.tolist())
    if "collection" in rows.columns:
        predictions.insert(0, "collection", rows.collection.tolist())
    predictions.insert(0, "image_id", rows.image_id.tolist())
    predictions.to_csv(out_dir / "predictions.csv", index=False, float_format="%.6f")
    with open(out_dir / "report.md", "a") as report:
        if metrics["gate"] is not None:
            gate = metrics["gate"]
            reasons_text = ", ".join(f"{n} {reason}" for reason, n in gate["by_reason"].items()) or "none"
            report.write(f"\n## Gate\n\n{gate['turned_away']} of {gate['n']} images answered \"cannot assess\" "
                         f"({reasons_text}); the metrics above score every image.\n")
        report.write(f"\n{DISCLAIMER}\n")
    return metrics


def package_calibration(classifier: Classifier, y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """ECE of the package's calibrated probabilities and of the network's raw softmax, recovered from them.

    The graph outputs softmax(logits / T) with the temperature T in its metadata, so softmax(T * log p) is
    softmax(logits) exactly (the constant that log p adds cancels): the "before" figure needs no logits.
    """
    temperature = float(classifier.metadata.get("skinscan.temperature", 1.0))
    raw = softmax(temperature * np.log(np.clip(probabilities, 1e-30, 1.0)), axis=1)
    return {"temperature": temperature, "fitted_on": "val",
            "ece_before": expected_calibration_error(y_true, raw),
            "ece_after": expected_calibration_error(y_true, probabilities)}
