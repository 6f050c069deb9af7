"""What the patient's age, sex and the lesion's body site would add to the network's decision, measured before
anyone changes the model contract to take them (docs/RESULTS.md, run P).

    python scripts/metadata_stacking.py --evaluations runs/eval-o/sog-lb-fold0 ... runs/eval-o/sog-lb-fold3

Each `--evaluations` folder is a `skinscan evaluate --part val` run of one cross-validation fold's checkpoint on
that fold's own val part (its `predictions.csv` and `logits.npy`), so every row is an out-of-fold prediction.
A multinomial logistic regression is fitted on all folds but one and scored on the one left out, for each fold:
on the logits alone, and on the logits plus age, sex and body site. The difference between the two is what the
metadata adds; the logits-only arm against the network's own argmax is what a learned re-weighting of the outputs
adds. Only val parts are read; never test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skinscan.factory.data import DatasetError, default_data_dir, read_metadata

ARMS = ("network argmax", "stacked: logits", "stacked: logits + age, sex, site")


def load_out_of_fold(evaluation_dirs: list[Path]) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Rows (image_id, true, fold) and their raw logits from the evaluation folders, one fold per folder."""
    frames, logits, codes = [], [], None
    for fold, folder in enumerate(evaluation_dirs):
        predictions_csv, logits_npy = folder / "predictions.csv", folder / "logits.npy"
        if not predictions_csv.is_file() or not logits_npy.is_file():
            sys.exit(f"error: {folder} has no predictions.csv and logits.npy; "
                     "make it with `skinscan evaluate --part val --split <fold csv> --out` that folder")
        predictions = pd.read_csv(predictions_csv)
        fold_codes = [c for c in predictions.columns if c not in ("image_id", "true")]
        if codes is not None and fold_codes != codes:
            sys.exit(f"error: {folder} has labels {fold_codes}, the first folder {codes}; stack one label set only")
        codes = fold_codes
        fold_logits = np.load(logits_npy)
        if len(fold_logits) != len(predictions):
            sys.exit(f"error: {folder}: {len(fold_logits)} logits for {len(predictions)} predictions; re-run evaluate")
        frames.append(predictions[["image_id", "true"]].assign(fold=fold))
        logits.append(fold_logits)
    rows = pd.concat(frames, ignore_index=True)
    if rows.image_id.duplicated().any():
        sys.exit("error: an image appears in two folders; each folder must be a different fold's val part")
    return rows, np.concatenate(logits).astype(np.float64), codes


def metadata_features(metadata: pd.DataFrame, fit: np.ndarray, sites: list[str]) -> np.ndarray:
    """Age / 100 (missing: the fitting rows' median, plus a missing flag), sex one-hot (unknown = all zero) and
    body site one-hot over `sites`; the imputation only looks at the rows the regression is fitted on."""
    age = pd.to_numeric(metadata["age"], errors="coerce").to_numpy(float) / 100
    missing = np.isnan(age)
    fill = np.nanmedian(age[fit]) if (fit & ~missing).any() else 0.5
    sex = metadata["sex"].fillna("unknown").str.lower().to_numpy()
    site = metadata["localization"].fillna("unknown").str.lower().to_numpy()
    columns = [np.where(missing, fill, age), missing, sex == "male", sex == "female"]
    columns += [site == name for name in sites]
    return np.column_stack(columns).astype(np.float64)


def stacking_model() -> object:
    """The regression fixed in run P's rule: standardised features, C = 1, class weights 'balanced'."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))


def score_folds(rows: pd.DataFrame, logits: np.ndarray, metadata: pd.DataFrame, codes: list[str]) -> list[dict]:
    """Per held-out fold: balanced accuracy and macro AUC of the three arms (ARMS)."""
    labels = rows["true"].map({code: i for i, code in enumerate(codes)}).to_numpy()
    sites = sorted(metadata["localization"].fillna("unknown").str.lower().unique())
    folds = rows["fold"].to_numpy()
    results = []
    for held_out in np.unique(folds):
        test, fit = folds == held_out, folds != held_out
        extra = metadata_features(metadata, fit, sites)
        probabilities = {ARMS[0]: softmax(logits[test], axis=1)}
        for arm, features in ((ARMS[1], logits), (ARMS[2], np.hstack([logits, extra]))):
            model = stacking_model().fit(features[fit], labels[fit])
            probabilities[arm] = model.predict_proba(features[test])
        results.append({"fold": int(held_out), "images": int(test.sum()), **{
            arm: {"balanced_accuracy": balanced_accuracy_score(labels[test], p.argmax(1)),
                  "macro_auc": roc_auc_score(labels[test], p, multi_class="ovr", average="macro",
                                             labels=range(len(codes))),
                  "recall": dict(zip(codes, recall_score(labels[test], p.argmax(1), labels=range(len(codes)),
                                                         average=None, zero_division=np.nan), strict=True))}
            for arm, p in probabilities.items()}})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=Path, nargs="+", required=True,
                        help="one `skinscan evaluate --part val` folder per cross-validation fold")
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="the HAM10000 folder whose metadata has age, sex and localization")
    parser.add_argument("--json", type=Path, help="also write the per-fold results here")
    args = parser.parse_args()
    if len(args.evaluations) < 2:
        parser.error("stacking needs at least two folds (fit on the others, score the one left out)")

    rows, logits, codes = load_out_of_fold(args.evaluations)
    try:
        metadata = read_metadata(args.data).set_index("image_id")
    except DatasetError as error:
        sys.exit(f"error: {error}")
    missing = sorted(set(rows.image_id) - set(metadata.index))
    if missing:
        sys.exit(f"error: {len(missing)} evaluated images (e.g. {missing[0]}) are not in {args.data}'s metadata")
    needed = {"age", "sex", "localization"} - set(metadata.columns)
    if needed:
        sys.exit(f"error: {args.data}'s metadata has no {', '.join(sorted(needed))} column; nothing to stack")
    results = score_folds(rows, logits, metadata.loc[rows.image_id].reset_index(), codes)

    print(f"{len(rows)} out-of-fold images in {len(results)} folds; balanced accuracy / macro AUC per held-out fold")
    print(f"{'fold':>4} {'images':>6}  " + "  ".join(f"{arm:>33}" for arm in ARMS))
    for result in results:
        cells = [f"{result[arm]['balanced_accuracy']:.3f} / {result[arm]['macro_auc']:.3f}" for arm in ARMS]
        print(f"{result['fold']:>4} {result['images']:>6}  " + "  ".join(f"{c:>33}" for c in cells))
    means = {arm: [np.mean([r[arm][key] for r in results]) for key in ("balanced_accuracy", "macro_auc")]
             for arm in ARMS}
    print(f"{'mean':>11}  " + "  ".join(f"{f'{m[0]:.3f} / {m[1]:.3f}':>33}" for m in means.values()))
    for first, second in ((ARMS[1], ARMS[0]), (ARMS[2], ARMS[1])):
        print(f"{second} -> {first}: balanced accuracy {means[first][0] - means[second][0]:+.3f}, "
              f"macro AUC {means[first][1] - means[second][1]:+.3f}")
    for arm in (ARMS[0], ARMS[2]):
        recall = {code: np.mean([r[arm]["recall"][code] for r in results]) for code in codes}
        print(f"mean recall, {arm}: " + ", ".join(f"{code} {value:.3f}" for code, value in recall.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
