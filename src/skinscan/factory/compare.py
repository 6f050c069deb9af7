"""`skinscan compare`: several trained checkpoints on one split, side by side, with honest error bars.

Why: a ~1,200-image validation split moves balanced accuracy by +-0.06 by chance, so "run B beat run A by
a point" means nothing on its own. This scores each checkpoint (seeds, recipes, a distilled student), each
with flip test-time augmentation if asked, and the average of their logits (the ensemble a distillation
teacher stands for), and puts beside each a lesion-clustered bootstrap interval and the paired interval of
its difference from the first checkpoint (the reference). Every number the results pages quote about seeds
and ensembles comes from this command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from skinscan.factory.data import read_split
from skinscan.factory.evaluate import checkpoint_model_and_data
from skinscan.factory.metrics import bootstrap_intervals, paired_bootstrap_difference
from skinscan.factory.train import checkpoint_labels, predict_logits, softmax


def _same_images(results: list[dict], names: list[str]) -> None:
    first = results[0]["image_ids"]
    for name, result in zip(names[1:], results[1:], strict=True):
        if list(result["image_ids"]) != list(first):
            raise ValueError(f"{name} was scored on other images than {names[0]}: compare checkpoints that read "
                             "the same split with the same label set")


def compare_checkpoints(checkpoints: list[str | Path], data_dir, split_csv, part: str = "val", tta: bool = False,
                        n_bootstrap: int = 1000, threads: int = 0) -> dict:
    """Rows of balanced accuracy / macro AUC (with 95% intervals) for each checkpoint, their ensemble, and
    each row's paired difference from the first checkpoint. `tta` adds flip-averaged rows."""
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    variants = [False, True] if tta else [False]
    names, scored, codes = [], [], []
    for path in checkpoints:
        checkpoint, model, data = checkpoint_model_and_data(path, data_dir, split_csv, parts=(part,), threads=threads)
        codes.append(tuple(checkpoint_labels(checkpoint).codes))
        if len(set(codes)) > 1:
            raise ValueError(f"the checkpoints predict different label sets {sorted(set(codes))}: "
                             "nothing to compare")
        for flip in variants:
            names.append(f"{path}{' + flips' if flip else ''}")
            scored.append({"logits": predict_logits(model, data[part].images, tta=flip),
                           "labels": data[part].labels.numpy(), "image_ids": data[part].image_ids})
    labels = list(codes[0])
    _same_images(scored, names)
    if len(checkpoints) > 1:
        for flip in variants:
            members = [s for s, n in zip(scored, names, strict=True) if n.endswith(" + flips") == flip]
            names.append(f"mean logits of the {len(checkpoints)}{' + flips' if flip else ''}")
            scored.append({**members[0], "logits": np.mean([m["logits"] for m in members], axis=0)})

    y_true = scored[0]["labels"]
    lesions = read_split(split_csv).set_index("image_id").loc[scored[0]["image_ids"], "lesion_id"].astype(str).tolist()
    reference = softmax(scored[0]["logits"])
    rows = []
    for name, result in zip(names, scored, strict=True):
        probabilities = softmax(result["logits"])
        intervals = bootstrap_intervals(y_true, probabilities, labels, n_resamples=n_bootstrap, cluster_ids=lesions)
        difference = paired_bootstrap_difference(y_true, probabilities, reference, labels, n_resamples=n_bootstrap,
                                                 cluster_ids=lesions)
        rows.append({"model": name, "balanced_accuracy": intervals["balanced_accuracy"],
                     "macro_auc": intervals["macro_auc"], "difference_from_first": difference})
    return {"part": part, "images": len(y_true), "lesions": len(set(lesions)), "labels": labels, "rows": rows}


def _interval(value: dict) -> str:
    if value["estimate"] is None:
        return "n/a"
    return f"{value['estimate']:+.3f} [{value['low']:+.3f}, {value['high']:+.3f}]"


def format_comparison(comparison: dict) -> str:
    """A plain-text table for the terminal and for pasting into a results page."""
    lines = [f"{comparison['part']} split: {comparison['images']} images of {comparison['lesions']} lesions; "
             "95% lesion-clustered bootstrap intervals; differences are paired, against the first row", ""]
    header = f"{'model':<60} {'balanced accuracy':<22} {'macro AUC':<22} {'bal.acc - first':<26} {'AUC - first':<26}"
    lines += [header, "-" * len(header)]
    for row in comparison["rows"]:
        b, a, d = row["balanced_accuracy"], row["macro_auc"], row["difference_from_first"]
        lines.append(f"{row['model'][-60:]:<60} "
                     f"{b['estimate']:.3f} [{b['low']:.3f}, {b['high']:.3f}]  "
                     f"{a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}]  "
                     f"{_interval(d['balanced_accuracy']):<26} {_interval(d['macro_auc']):<26}")
    return "\n".join(lines)


def write_comparison(comparison: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(comparison, indent=2))
