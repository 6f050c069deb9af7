"""scripts/degrade_drift.py: the per-collection scores, the malignant-share drift on images degraded to 84 px,
and a run on real HAM10000 images with a small checkpoint."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="scoring a checkpoint needs the `train` extra (torch)")

from skinscan.factory import train as train_module  # noqa: E402
from skinscan.factory.data import read_split  # noqa: E402
from skinscan.factory.model import create_model  # noqa: E402
from skinscan.labels import HAM10000  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "degrade_drift.py"
spec = importlib.util.spec_from_file_location("degrade_drift", SCRIPT)
degrade_drift = importlib.util.module_from_spec(spec)
spec.loader.exec_module(degrade_drift)

NV, MEL, BKL, BCC = (HAM10000.index(code) for code in ("nv", "mel", "bkl", "bcc"))


def one_hot(indices) -> np.ndarray:
    probabilities = np.full((len(indices), len(HAM10000.codes)), 0.01)
    probabilities[np.arange(len(indices)), indices] = 1.0
    return probabilities / probabilities.sum(1, keepdims=True)


def test_degraded_shrinks_the_shorter_side_and_leaves_small_images():
    image = Image.new("RGB", (200, 150))
    assert degrade_drift.degraded(image, 84).size == (112, 84)
    small = Image.new("RGB", (84, 84))
    assert degrade_drift.degraded(small, 84) is small


def test_malignant_share_and_drift_per_true_class():
    labels = np.array([NV, NV, NV, NV, MEL, MEL])
    clean = one_hot([NV, NV, NV, MEL, MEL, NV])
    blurred = one_hot([NV, BCC, MEL, MEL, MEL, MEL])  # blur turns two more nevi malignant
    report = degrade_drift.drift_report(labels, clean, blurred, HAM10000, 84)
    assert report["malignant_share_clean"] == pytest.approx({"nv": 0.25, "mel": 0.5, "all": 2 / 6})
    assert report["malignant_share_degraded"] == pytest.approx({"nv": 0.75, "mel": 1.0, "all": 5 / 6})
    assert report["malignant_share_drift"]["nv"] == pytest.approx(0.5)
    assert report["degrade_px"] == 84 and "degraded_84px" in report
    assert "+0.500" in degrade_drift.format_report(report)
    assert "degrade_px" not in degrade_drift.drift_report(labels, clean, None, HAM10000, 0)


def test_scores_over_the_classes_present():
    labels = np.array([NV, NV, MEL, MEL, BKL, BKL])
    probabilities = one_hot([NV, BCC, MEL, MEL, BKL, NV])  # a bcc prediction still counts as wrong for nv
    probabilities[:, MEL] = [0.1, 0.2, 0.9, 0.8, 0.3, 0.05]
    result = degrade_drift.scores(labels, probabilities, HAM10000)
    assert result["classes_present"] == ["bkl", "mel", "nv"]
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert result["melanoma_auc"] == pytest.approx(1.0)
    assert result["melanoma_sensitivity_at_80_specificity"] == pytest.approx(1.0)
    assert 0 <= result["macro_auc"] <= 1


@pytest.mark.slow
def test_main_scores_real_images_clean_and_degraded(ham10000_dir, split_csv, tmp_path, capsys):
    model = create_model("mobilenet_v3_small", None, num_classes=len(HAM10000.codes))
    config = train_module.TrainConfig(data_dir=str(ham10000_dir), split_csv=str(split_csv), out_dir=str(tmp_path),
                                      input_size=(64, 84))
    checkpoint = tmp_path / "best.pt"
    torch.save(train_module._export_state(model, config, {"epoch": 1}), checkpoint)
    split = read_split(split_csv)
    small = split[split.split == "test"].groupby("dx").head(2)  # 14 images, all seven classes
    small_csv = tmp_path / "small.csv"
    small.to_csv(small_csv, index=False)
    out = tmp_path / "drift.json"
    args = ["--checkpoint", str(checkpoint), "--images", str(ham10000_dir / "images"), "--split", str(small_csv),
            "--part", "test", "--degrade", "84", "--out", str(out)]
    assert degrade_drift.main(args) == 0
    report = json.loads(out.read_text())
    assert report["clean"]["images"] == 14 and report["degraded_84px"]["images"] == 14
    assert set(report["malignant_share_drift"]) == {*HAM10000.codes, "all"}
    assert "share predicted malignant, clean -> degraded" in capsys.readouterr().out
    assert degrade_drift.main(args[:6] + ["--part", "val"]) == 2  # the small split has no val part
    assert "is empty" in capsys.readouterr().err
    assert degrade_drift.main(["--checkpoint", str(tmp_path / "none.pt")] + args[2:]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
