"""scripts/metadata_stacking.py (docs/RESULTS.md run P): the stacked regression finds what the metadata carries
and nothing when it carries nothing, every fold is scored by a fit that never saw it, and bad evaluation
folders get a clear error."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "metadata_stacking.py"
spec = importlib.util.spec_from_file_location("metadata_stacking", SCRIPT)
metadata_stacking = importlib.util.module_from_spec(spec)
spec.loader.exec_module(metadata_stacking)

CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
SITES = ["back", "face", "foot", "trunk", "unknown"]


def synthetic(site_informative: bool, images: int = 1400, seed: int = 0):
    """Rows in 4 folds with weak logits (the true class + noise); the body site either encodes the class (site =
    class mod 5, 80% of the time) or is drawn independently of it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CODES), images)
    logits = rng.normal(0, 1.0, (images, len(CODES)))
    logits[np.arange(images), labels] += 0.6
    if site_informative:
        site = np.where(rng.random(images) < 0.8, labels % len(SITES), rng.integers(0, len(SITES), images))
    else:
        site = rng.integers(0, len(SITES), images)
    rows = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(images)],
                         "true": [CODES[c] for c in labels], "fold": np.arange(images) % 4})
    metadata = pd.DataFrame({"image_id": rows.image_id, "age": rng.integers(20, 85, images).astype(float),
                             "sex": rng.choice(["male", "female", "unknown"], images),
                             "localization": [SITES[s] for s in site]})
    return rows, logits, metadata


def mean(results, arm, key="balanced_accuracy"):
    return np.mean([r[arm][key] for r in results])


def test_informative_metadata_lifts_the_stacked_arm():
    rows, logits, metadata = synthetic(site_informative=True)
    results = metadata_stacking.score_folds(rows, logits, metadata, CODES)
    assert [r["fold"] for r in results] == [0, 1, 2, 3]
    gain = mean(results, metadata_stacking.ARMS[2]) - mean(results, metadata_stacking.ARMS[1])
    assert gain > 0.15


def test_uninformative_metadata_adds_nothing():
    rows, logits, metadata = synthetic(site_informative=False)
    results = metadata_stacking.score_folds(rows, logits, metadata, CODES)
    gain = mean(results, metadata_stacking.ARMS[2]) - mean(results, metadata_stacking.ARMS[1])
    assert abs(gain) < 0.03
    # logits that are the truth plus symmetric noise: the network's own argmax is already the best decision
    assert abs(mean(results, metadata_stacking.ARMS[1]) - mean(results, metadata_stacking.ARMS[0])) < 0.03


def test_each_fold_is_scored_by_a_fit_that_never_saw_it(monkeypatch):
    rows, logits, metadata = synthetic(site_informative=True, images=280)
    fitted_on = []
    real_model = metadata_stacking.stacking_model

    class Spy:
        def __init__(self):
            self.model = real_model()

        def fit(self, features, labels):
            fitted_on.append({tuple(np.round(row, 6)) for row in features[:, :len(CODES)]})
            self.model.fit(features, labels)
            return self

        def predict_proba(self, features):
            scored = {tuple(np.round(row, 6)) for row in features[:, :len(CODES)]}
            assert not scored & fitted_on[-1]
            return self.model.predict_proba(features)

    monkeypatch.setattr(metadata_stacking, "stacking_model", Spy)
    metadata_stacking.score_folds(rows, logits, metadata, CODES)
    assert len(fitted_on) == 8  # two stacked arms x four held-out folds


def test_age_imputation_only_looks_at_the_fitting_rows():
    metadata = pd.DataFrame({"age": [20.0, 40.0, None, 80.0], "sex": ["male", "female", "unknown", None],
                             "localization": ["back", None, "face", "back"]})
    fit = np.array([True, True, True, False])
    features = metadata_stacking.metadata_features(metadata, fit, ["back", "face", "unknown"])
    assert features[2, 0] == pytest.approx(0.30)  # median of 20 and 40 (the fitting rows), not of 20, 40, 80
    assert features[:, 1].tolist() == [0, 0, 1, 0]
    assert features[:, 2:4].tolist() == [[1, 0], [0, 1], [0, 0], [0, 0]]
    assert features[:, 4:].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]


def write_evaluation(folder: Path, image_ids, logits_rows=None):
    folder.mkdir()
    probabilities = pd.DataFrame(np.full((len(image_ids), len(CODES)), 1 / len(CODES)), columns=CODES)
    probabilities.insert(0, "true", "nv")
    probabilities.insert(0, "image_id", image_ids)
    probabilities.to_csv(folder / "predictions.csv", index=False)
    np.save(folder / "logits.npy", np.zeros((logits_rows or len(image_ids), len(CODES))))


def test_bad_evaluation_folders_get_a_clear_error(tmp_path):
    write_evaluation(tmp_path / "a", ["ISIC_1", "ISIC_2"])
    write_evaluation(tmp_path / "b", ["ISIC_2", "ISIC_3"])
    write_evaluation(tmp_path / "c", ["ISIC_4"], logits_rows=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="two folders"):
        metadata_stacking.load_out_of_fold([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SystemExit, match="3 logits for 1 predictions"):
        metadata_stacking.load_out_of_fold([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(SystemExit, match="no predictions.csv"):
        metadata_stacking.load_out_of_fold([tmp_path / "a", tmp_path / "empty"])
    rows, logits, codes = metadata_stacking.load_out_of_fold([tmp_path / "a"])
    assert rows.fold.tolist() == [0, 0] and logits.shape == (2, 7) and codes == CODES


def test_command_reads_the_real_metadata_and_names_unknown_images(ham10000_dir, tmp_path):
    """The command end to end on two folds of real HAM10000 image ids (random logits): it joins age, sex and
    site from the metadata and prints the three arms; an image id the metadata lacks is a clear error."""
    metadata = pd.read_csv(ham10000_dir / "HAM10000_metadata.csv")
    rows = metadata.groupby("dx").head(30).sample(frac=1, random_state=0)
    rng = np.random.default_rng(0)
    for fold, part in enumerate((rows.iloc[::2], rows.iloc[1::2])):
        folder = tmp_path / f"fold{fold}"
        folder.mkdir()
        part[["image_id"]].assign(true=part.dx.to_numpy(), **{c: 1 / 7 for c in CODES}).to_csv(
            folder / "predictions.csv", index=False)
        np.save(folder / "logits.npy", rng.normal(size=(len(part), len(CODES))))
    command = [sys.executable, str(SCRIPT), "--data", str(ham10000_dir), "--json", str(tmp_path / "out.json"),
               "--evaluations", str(tmp_path / "fold0"), str(tmp_path / "fold1")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stacked: logits + age, sex, site" in result.stdout and f"{len(rows)} out-of-fold images" in result.stdout
    assert [r["fold"] for r in json.loads((tmp_path / "out.json").read_text())] == [0, 1]

    predictions = pd.read_csv(tmp_path / "fold1" / "predictions.csv")
    predictions.loc[0, "image_id"] = "ISIC_not_in_metadata"
    predictions.to_csv(tmp_path / "fold1" / "predictions.csv", index=False)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "ISIC_not_in_metadata" in result.stderr
    assert "Traceback" not in result.stderr
