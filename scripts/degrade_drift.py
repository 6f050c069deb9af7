"""Score a checkpoint on one part of a split, and with `--degrade PX` check that blur does not push it to "malignant".

Why: pooled with the ISIC 2019 extra images (BCN20000 at 84 px, 23% melanoma and 23% bcc against HAM10000's 11%
and 5%), a model can learn "blurry = BCN = malignant". The check (issue 23, point 3) shrinks each image file to
PX px on its shorter side, then feeds it through the model's own preprocessing (so it reaches the network as an
upscaled low-resolution photo would), and reports, per true class, the share of images whose top prediction is a
malignant diagnosis (the label set's malignant codes: akiec, bcc, mel for HAM10000's) on the clean and on the
degraded images. A model that learned dermoscopy keeps those shares; one that learned the source's blur raises
them, most visibly for the nevi.

It also prints the numbers issue 23 compares across collections: balanced accuracy over the classes present
(argmax over all the model's classes), macro AUC over the classes present, melanoma AUC and melanoma
sensitivity at 80% specificity.

    python scripts/degrade_drift.py --checkpoint runs/train/best.pt --images ../shared/data/ham10000/images \\
        --split runs/split.csv --part test --degrade 84 --out runs/drift.json
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from skinscan.factory.data import DatasetError, image_paths, read_split
from skinscan.factory.metrics import sensitivity_at_specificity
from skinscan.factory.model import model_from_checkpoint
from skinscan.factory.train import checkpoint_labels, load_checkpoint, predict_logits, softmax
from skinscan.labels import LabelSet
from skinscan.runtime.preprocess import PreprocessConfig, load_image, resize_to_input


def degraded(image: Image.Image, short_side: int) -> Image.Image:
    """The image shrunk (antialiased bilinear) to `short_side` px on its shorter side; unchanged if already smaller."""
    width, height = image.size
    scale = short_side / min(width, height)
    if scale >= 1:
        return image
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)


def decode(paths: list[Path], config: PreprocessConfig, degrade: int = 0, threads: int = 1) -> np.ndarray:
    """The model inputs (uint8 N, H, W, 3) of the image files, each first degraded to `degrade` px when > 0."""
    def one(path: Path) -> np.ndarray:
        image = load_image(path)
        return resize_to_input(degraded(image, degrade) if degrade else image, config)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        arrays = list(pool.map(one, paths))
    return np.stack(arrays) if arrays else np.zeros((0, *config.size, 3), np.uint8)


def scores(labels: np.ndarray, probabilities: np.ndarray, label_set: LabelSet) -> dict:
    """Balanced accuracy and macro AUC over the classes present; melanoma AUC and sensitivity at 80% specificity."""
    present = np.unique(labels)
    predicted = probabilities.argmax(1)
    result = {"images": int(len(labels)), "classes_present": [label_set.codes[c] for c in present],
              "balanced_accuracy": float(np.mean([(predicted[labels == c] == c).mean() for c in present]))}
    if len(present) > 2:
        within = probabilities[:, present] / probabilities[:, present].sum(1, keepdims=True)
        result["macro_auc"] = float(roc_auc_score(labels, within, multi_class="ovr", labels=present))
    if "mel" in label_set.codes:
        mel = label_set.index("mel")
        is_melanoma = labels == mel
        if 0 < is_melanoma.sum() < len(labels):
            result["melanoma_auc"] = float(roc_auc_score(is_melanoma, probabilities[:, mel]))
            result["melanoma_sensitivity_at_80_specificity"] = sensitivity_at_specificity(
                is_melanoma, probabilities[:, mel], 0.80)["sensitivity"]
    return result


def malignant_share(labels: np.ndarray, probabilities: np.ndarray, label_set: LabelSet) -> dict[str, float]:
    """Per true class present (and "all"), the share of images whose argmax is one of the malignant codes."""
    malignant = np.isin(probabilities.argmax(1), [label_set.index(c) for c in label_set.malignant_codes])
    shares = {label_set.codes[c]: float(malignant[labels == c].mean()) for c in np.unique(labels)}
    shares["all"] = float(malignant.mean()) if len(labels) else float("nan")
    return shares


def drift_report(labels: np.ndarray, clean: np.ndarray, degraded_probabilities: np.ndarray | None,
                 label_set: LabelSet, degrade: int) -> dict:
    """The JSON result: scores on the clean images and, when degraded ones exist, the malignant-share drift."""
    report = {"clean": scores(labels, clean, label_set),
              "malignant_share_clean": malignant_share(labels, clean, label_set)}
    if degraded_probabilities is not None:
        report["degrade_px"] = degrade
        report[f"degraded_{degrade}px"] = scores(labels, degraded_probabilities, label_set)
        report["malignant_share_degraded"] = malignant_share(labels, degraded_probabilities, label_set)
        report["malignant_share_drift"] = {code: report["malignant_share_degraded"][code] - share
                                           for code, share in report["malignant_share_clean"].items()}
    return report


def format_report(report: dict) -> str:
    def line(name: str, values: dict) -> str:
        parts = [f"{key.replace('melanoma_sensitivity_at_80_specificity', 'mel sens@80%spec')} {value:.3f}"
                 for key, value in values.items() if isinstance(value, float)]
        return f"{name}: {values['images']} images ({', '.join(values['classes_present'])}): " + ", ".join(parts)

    lines = [line("clean", report["clean"])]
    if "degrade_px" in report:
        px = report["degrade_px"]
        lines.append(line(f"degraded to {px} px", report[f"degraded_{px}px"]))
        lines.append("share predicted malignant, clean -> degraded (drift):")
        for code, share in report["malignant_share_clean"].items():
            lines.append(f"  {code:6s} {share:.3f} -> {report['malignant_share_degraded'][code]:.3f} "
                         f"({report['malignant_share_drift'][code]:+.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a `skinscan train` checkpoint (best.pt)")
    parser.add_argument("--images", type=Path, required=True, help="the folder of <image id>.jpg files")
    parser.add_argument("--split", type=Path, required=True, help="a split CSV (image_id, lesion_id, dx, split)")
    parser.add_argument("--part", default="test", choices=["train", "val", "test"])
    parser.add_argument("--degrade", type=int, default=0, metavar="PX",
                        help="also score the images shrunk to PX px on their shorter side (e.g. 84; default 0: off)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.degrade < 0:
        parser.error(f"--degrade must be 0 (off) or a size in pixels, got {args.degrade}")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        label_set = checkpoint_labels(checkpoint)
        config = PreprocessConfig.from_json(checkpoint["preprocess"])
        split = read_split(args.split)
        rows = split[split.split == args.part]
        unknown = sorted(set(rows.dx) - set(label_set.codes))
        if rows.empty or unknown:
            raise DatasetError(f"the {args.part} part of {args.split} " + (
                "is empty" if rows.empty else f"has diagnoses the model does not predict: {unknown}"))
        paths = image_paths(args.images, rows.image_id.tolist())
    except (DatasetError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    model = model_from_checkpoint(checkpoint)
    labels = np.array([label_set.index(dx) for dx in rows.dx])
    clean = softmax(predict_logits(model, torch.from_numpy(decode(paths, config, threads=args.threads))))
    degraded_probabilities = None
    if args.degrade:
        degraded_probabilities = softmax(predict_logits(
            model, torch.from_numpy(decode(paths, config, args.degrade, threads=args.threads))))
    report = {"checkpoint": str(args.checkpoint), "split": str(args.split), "part": args.part,
              **drift_report(labels, clean, degraded_probabilities, label_set, args.degrade)}
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
