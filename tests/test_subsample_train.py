"""scripts/subsample_train.py: the learning-curve split keeps whole lesions, about the asked share of every
class's train images, and val/test untouched; a split written by it reads back as a valid split."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinscan.factory.data import read_split

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "subsample_train.py"
spec = importlib.util.spec_from_file_location("subsample_train", SCRIPT)
subsample_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(subsample_train)


def synthetic_split(seed: int = 0) -> pd.DataFrame:
    """~2,000 images of 7 imbalanced classes, 1-3 images per lesion, already split 70/15/15 by lesion."""
    rng = np.random.default_rng(seed)
    rows = []
    for dx, lesions in {"nv": 600, "mel": 120, "bkl": 110, "bcc": 50, "akiec": 35, "vasc": 15, "df": 12}.items():
        for lesion in range(lesions):
            part = rng.choice(["train", "val", "test"], p=[0.7, 0.15, 0.15])
            for image in range(rng.integers(1, 4)):
                rows.append((f"ISIC_{dx}_{lesion}_{image}", f"HAM_{dx}_{lesion}", dx, part))
    return pd.DataFrame(rows, columns=["image_id", "lesion_id", "dx", "split"])


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_keeps_whole_lesions_about_the_fraction_per_class_and_val_test_unchanged(fraction):
    split = synthetic_split()
    smaller = subsample_train.subsample_train(split, fraction, seed=1)
    for part in ("val", "test"):
        assert smaller[smaller.split == part].reset_index(drop=True).equals(
            split[split.split == part].reset_index(drop=True))
    train, kept = split[split.split == "train"], smaller[smaller.split == "train"]
    assert set(kept.image_id) <= set(train.image_id)
    # whole lesions: a kept lesion keeps all its train images
    kept_lesions = set(kept.lesion_id)
    assert set(train.image_id[train.lesion_id.isin(kept_lesions)]) == set(kept.image_id)
    for dx, total in train.dx.value_counts().items():
        share = (kept.dx == dx).sum() / total
        assert abs(share - fraction) <= max(0.08, 3 / total), (dx, share)
    assert subsample_train.subsample_train(split, fraction, seed=1).equals(smaller)  # deterministic
    assert not subsample_train.subsample_train(split, fraction, seed=2).equals(smaller)


def test_fraction_one_is_the_split_itself_and_out_of_range_is_refused():
    split = synthetic_split()
    assert subsample_train.subsample_train(split, 1.0).equals(split)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="--fraction"):
            subsample_train.subsample_train(split, bad)


def test_command_line_writes_a_valid_split_and_refuses_to_overwrite_its_input(tmp_path):
    source = tmp_path / "split.csv"
    synthetic_split().to_csv(source, index=False)
    out = tmp_path / "split-half.csv"
    done = subprocess.run([sys.executable, str(SCRIPT), "--split", str(source), "--fraction", "0.5", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train keeps" in done.stdout and "val and test unchanged" in done.stdout
    assert len(read_split(out)) < len(read_split(source))
    same = subprocess.run([sys.executable, str(SCRIPT), "--split", str(source), "--fraction", "0.5", "--out",
                           str(source)], capture_output=True, text=True)
    assert same.returncode == 2 and "--out must differ" in same.stderr
