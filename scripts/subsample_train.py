"""A split CSV whose train part keeps only a fraction of its lesions: for learning curves.

    python scripts/subsample_train.py --split runs/split.csv --fraction 0.5 --out runs/split-train50.csv

Why: whether more labelled images would lift the model (e.g. refitting on train + val) is a question about
the slope of its learning curve, which we can measure by training the same recipe on less data and scoring
it on the same val split. The kept lesions are drawn the way `skinscan data split` draws its parts (whole
lesions, stratified by diagnosis, seeded), so every class keeps about `fraction` of its train images; val and
test rows are copied unchanged, the dropped train rows are left out of the file, and `skinscan train --split`
reads the result like any other split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from skinscan.factory.data import lesion_grouped_split, read_split, write_split


def subsample_train(split: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """`split` with only ~`fraction` of its train lesions (lesion-grouped, stratified by diagnosis)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    train = split[split.split == "train"]
    # lesion_grouped_split hands out whole lesions per diagnosis: "train" = kept, "val" = dropped (none at 1).
    kept_or_not = lesion_grouped_split(train[["image_id", "lesion_id", "dx"]], (fraction, 1 - fraction, 0.0), seed)
    kept_ids = set(kept_or_not.image_id[kept_or_not.split == "train"])
    keep = (split.split != "train") | split.image_id.isin(kept_ids)
    return split[keep].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--fraction", type=float, required=True, help="share of the train lesions to keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.resolve() == args.split.resolve():
        parser.error("--out must differ from --split (the full split is the one every other step uses)")
    try:
        smaller = subsample_train(read_split(args.split), args.fraction, args.seed)
    except ValueError as error:
        parser.error(str(error))
    write_split(smaller, args.out)
    counts = smaller[smaller.split == "train"].dx.value_counts().sort_index()
    print(f"{args.out}: train keeps {counts.sum()} images ({', '.join(f'{dx} {n}' for dx, n in counts.items())}); "
          f"val and test unchanged")


if __name__ == "__main__":
    main()
