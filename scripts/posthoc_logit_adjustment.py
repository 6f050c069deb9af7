"""How much a post-hoc logit adjustment (Menon et al. 2021) would add to a checkpoint's balanced accuracy,
estimated without fooling ourselves: the strength is chosen on one half of the validation lesions and scored
on the other half (both ways, over many random halvings), so the reported gain is out of sample.

    python scripts/posthoc_logit_adjustment.py --checkpoint runs/v3s-252/best.pt [--halvings 200]

The adjusted decision is argmax(logits - delta * log prior), with the prior the training loss already
adjusted for (square-root class frequencies of the train split, `--sampling-power 0.5`'s stream): delta > 0
pushes decisions towards the rare classes. Prints balanced accuracy on the whole val split for each delta
(in-sample: optimistic) and the distribution of the out-of-sample gain over delta = 0. Val only; never test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from skinscan.factory.data import default_data_dir, read_split
from skinscan.factory.evaluate import checkpoint_model_and_data
from skinscan.factory.train import checkpoint_labels, predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--halvings", type=int, default=200)
    args = parser.parse_args()

    checkpoint, model, data = checkpoint_model_and_data(args.checkpoint, args.data, args.split, parts=("val",))
    val = data["val"]
    logits, labels = predict_logits(model, val.images).astype(np.float64), val.labels.numpy()
    split = read_split(args.split).set_index("image_id")
    lesions = split.loc[list(val.image_ids), "lesion_id"].to_numpy()
    codes = list(checkpoint_labels(checkpoint).codes)  # the model's output order
    train_counts = split[split.split == "train"].dx.value_counts().reindex(codes, fill_value=0).to_numpy(float)
    log_prior = np.log(np.sqrt(train_counts) / np.sqrt(train_counts).sum())
    deltas = np.round(np.arange(-0.5, 1.01, 0.125), 3)

    def balanced(mask: np.ndarray, delta: float) -> float:
        return balanced_accuracy_score(labels[mask], (logits[mask] - delta * log_prior).argmax(1))

    everything = np.ones(len(labels), bool)
    print("val, in-sample:", "  ".join(f"{d:+.3f}: {balanced(everything, d):.3f}" for d in deltas))
    rng = np.random.default_rng(0)
    unique = np.unique(lesions)
    gains, chosen = [], []
    for _ in range(args.halvings):
        first = np.isin(lesions, rng.choice(unique, len(unique) // 2, replace=False))
        for fit, score in ((first, ~first), (~first, first)):
            best = deltas[int(np.argmax([balanced(fit, d) for d in deltas]))]
            chosen.append(best)
            gains.append(balanced(score, best) - balanced(score, 0.0))
    gains = np.array(gains)
    low, high = np.percentile(gains, [2.5, 97.5])
    print(f"out-of-sample gain of a delta chosen on the other half: mean {gains.mean():+.4f}, "
          f"95% of halvings in [{low:+.4f}, {high:+.4f}], positive in {(gains > 0).mean():.0%}")
    values, counts = np.unique(chosen, return_counts=True)
    print("deltas chosen:", ", ".join(f"{v:+.3f} x{c}" for v, c in zip(values, counts, strict=True)))


if __name__ == "__main__":
    main()
