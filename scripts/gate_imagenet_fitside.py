"""Fit-side evidence for a future gate design: would a dermoscopy score on a *second*, ImageNet-only backbone
(MobileNetV3-Small from ../shared/weights, not fine-tuned on any lesion) generalise across devices better than one
on the shipped classifier's pooled features? Same images, same logistic regression, same leave-one-source-out
check as scripts/gate_fitside.py; never the test split, the external collection or the non-lesion corpus.

    python scripts/gate_imagenet_fitside.py --cache runs/c5/fit.npz --negatives runs/negatives \
        --weights ../shared/weights/mobilenet_v3_small_imagenet.pth --out runs/c4/imagenet_pooled.npz

Needs the `train` extra (torch, torchvision). The cache must be the one `skinscan regate --negatives ... --cache`
wrote with the same data options (its pooled features are the classifier's side of the comparison).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

from skinscan.factory import regate
from skinscan.factory.onnx_metadata import read_metadata
from skinscan.runtime.assess import tail_value
from skinscan.runtime.classifier import bundled_package_dir
from skinscan.runtime.preprocess import PreprocessConfig

REGULARISATION = (0.002, 0.01, 0.05)
TAIL = 0.005


def imagenet_features(data: regate.FitData, weights: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The fitting sets (`regate.fit_sets` + `negative_sets`, the bundled model's input size) through the
    ImageNet backbone: pooled 576-d features per set, and each lesion's source."""
    model = onnx.load(str(bundled_package_dir() / "skinscan.onnx"))
    config = PreprocessConfig.from_json(read_metadata(model)["skinscan.preprocess"])
    images, source = regate.fit_sets(data, config)
    images.update(regate.negative_sets(data, config))
    net = torchvision.models.mobilenet_v3_small()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    features = {}
    with torch.no_grad():
        for name, array in images.items():
            parts = []
            for i in range(0, len(array), 64):
                x = (torch.from_numpy(array[i:i + 64]).permute(0, 3, 1, 2).float() - 127.5) / 127.5  # the weights'
                parts.append(net.avgpool(net.features(x)).flatten(1).numpy())                     # own scaling
            features[name] = np.concatenate(parts)
    return features, source


def compare(fit: regate.FitScores, imagenet: dict[str, np.ndarray], source: np.ndarray) -> list[str]:
    lines = []
    for kind in ("classifier", "imagenet"):
        def inputs(name, kind=kind):
            return {0: imagenet[name] if kind == "imagenet" else fit.sets[name].pooled}

        def low(weight, bias, name, kind=kind):
            return tail_value(bias + inputs(name, kind)[0] @ weight[0], TAIL)
        for regularisation in REGULARISATION:
            lesions, negatives = inputs("lesions"), [inputs("ordinary"), inputs("generic")]
            weight, bias = regate.fit_dermoscopy(lesions, negatives, regularisation)
            line = min(low(weight, bias, name) for name in regate.VAL_SOURCE)
            held_out = np.mean(bias + inputs("generic_held_out")[0] @ weight[0] < line)
            unseen = []
            for name, held in regate.VAL_SOURCE.items():
                other = next(n for n, s in regate.VAL_SOURCE.items() if s != held)
                w, b = regate.fit_dermoscopy({0: lesions[0][source != held]}, negatives, regularisation)
                unseen.append(np.mean(b + inputs(name)[0] @ w[0] < low(w, b, other)))
            lines.append(f"{kind} C={regularisation}: generic held-out refused {held_out:.1%}; unseen source refused "
                         f"HAM10000 {unseen[0]:.1%} / the 84-px source {unseen[1]:.1%}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--negatives", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--extra", type=Path, default=Path("../shared/data/isic2019_extra"))
    parser.add_argument("--out", type=Path, help="cache of the ImageNet features (.npz), reused if present")
    args = parser.parse_args()
    if args.out and args.out.is_file():
        with np.load(args.out) as archive:
            imagenet = {k: archive[k] for k in archive.files if k != "source"}
            source = archive["source"]
    else:
        data = regate.FitData(args.data, args.split, args.extra, negatives=args.negatives)
        imagenet, source = imagenet_features(data, args.weights)
        if args.out:
            np.savez(args.out, source=source, **imagenet)
    print("\n".join(compare(regate.FitScores.load(args.cache), imagenet, source)))


if __name__ == "__main__":
    main()
