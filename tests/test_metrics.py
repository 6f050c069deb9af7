"""Tests of skinscan.factory.metrics (hand-made cases, parity with isic-challenge-scoring) and
skinscan.factory.report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from skinscan.factory.metrics import (
    _weighted_auc,
    auc_above_sensitivity,
    bootstrap_intervals,
    classification_metrics,
    expected_calibration_error,
    paired_bootstrap_difference,
    reliability_curve,
    sensitivity_at_specificity,
    subgroup_metrics,
)
from skinscan.factory.report import age_band, write_evaluation_report
from skinscan.labels import LABEL_CODES

LABELS = list(LABEL_CODES)
MEL = LABELS.index("mel")
# HAM10000 class counts (akiec, bcc, bkl, df, mel, nv, vasc) out of 10015 images.
HAM10000_PRIORS = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10015


def realistic_predictions(n: int = 500, seed: int = 0, decimals: int | None = None):
    """Imbalanced labels like HAM10000 and softmax outputs of a decent, imperfect, overconfident model."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(LABELS), size=n, p=HAM10000_PRIORS)
    separability = np.array([1.5, 2.5, 1.8, 1.2, 1.6, 2.2, 3.0])
    logits = rng.normal(scale=1.0, size=(n, len(LABELS))) + np.log(HAM10000_PRIORS)
    logits[np.arange(n), y] += separability[y]
    # melanoma and nevus are confused with each other, as they are in practice
    logits[y == MEL, LABELS.index("nv")] += 1.0
    logits *= 1.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if decimals is not None:
        probs = np.round(probs, decimals)
    return y, probs


def one_hot(y: np.ndarray, n_classes: int = len(LABELS)) -> np.ndarray:
    return np.eye(n_classes)[y]


# --------------------------------------------------------------------------------------------------
# Hand-made cases with known answers
# --------------------------------------------------------------------------------------------------


def test_perfect_classifier_scores_one_everywhere():
    y = np.repeat(np.arange(len(LABELS)), [3, 4, 5, 2, 6, 20, 2])
    probs = np.full((len(y), len(LABELS)), 0.05)
    probs[np.arange(len(y)), y] = 0.7
    m = classification_metrics(y, probs, LABELS, n_bootstrap=50)

    for key in ["accuracy", "balanced_accuracy", "macro_auc", "macro_average_precision", "malignant_auc"]:
        assert m[key] == pytest.approx(1.0), key
    assert m["auc_above_80_sensitivity"] == pytest.approx(1.0)
    assert m["melanoma_sensitivity_at_80_specificity"] == 1.0
    assert m["melanoma_sensitivity_at_90_specificity"] == 1.0
    for code, per_class in m["per_class"].items():
        for key in ["sensitivity", "specificity", "ppv", "f1", "auc", "auc_above_80_sensitivity"]:
            assert per_class[key] == pytest.approx(1.0), (code, key)
    assert np.array_equal(m["confusion_matrix"], np.diag(np.bincount(y)))
    interval = m["confidence_intervals"]["balanced_accuracy"]
    assert interval["low"] == interval["high"] == 1.0
    # all confidences are 0.7 and all are right: the ECE is exactly the 0.3 gap
    assert m["ece"] == pytest.approx(0.3)


def test_wrong_predictions_are_counted_per_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = one_hot(np.array([0, 1, 1, 1, 0, 2]), 3) * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"], malignant=["a"], n_bootstrap=0)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    a = m["per_class"]["a"]
    assert (a["sensitivity"], a["specificity"], a["ppv"], a["f1"]) == pytest.approx((0.5, 0.75, 0.5, 0.5))
    b = m["per_class"]["b"]
    assert (b["sensitivity"], b["specificity"], b["ppv"]) == pytest.approx((1.0, 0.75, 2 / 3))
    assert "confidence_intervals" not in m
    assert "melanoma_operating_points" not in m  # no "mel" among these labels


def test_missing_class_gives_none_not_a_crash():
    y, probs = realistic_predictions(400, seed=3)
    df = LABELS.index("df")
    keep = y != df
    y, probs = y[keep], probs[keep]
    m = classification_metrics(y, probs, LABELS, n_bootstrap=100)

    absent = m["per_class"]["df"]
    assert absent["n"] == 0
    for key in ["auc", "auc_above_80_sensitivity", "average_precision", "sensitivity"]:
        assert absent[key] is None, key
    assert absent["specificity"] is not None  # negatives exist, so specificity is defined
    present = [k for k in range(len(LABELS)) if k != df]
    expected_macro_auc = np.mean([roc_auc_score(y == k, probs[:, k]) for k in present])
    assert m["macro_auc"] == pytest.approx(expected_macro_auc, abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)), abs=1e-12)
    json.dumps(m, allow_nan=False)  # NaN would make the JSON invalid


def test_expected_calibration_error_hand_example():
    # Two samples at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|/2 + |1.0-0.6|/2 = 0.4
    y = np.array([0, 0, 0, 0])
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.4)


def test_reliability_bins_are_right_closed():
    y = np.array([0, 0, 1])
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    curve = reliability_curve(y, probs, n_bins=2)
    assert curve.count.tolist() == [1, 2]  # 0.5 falls in (0, 0.5], 0.75 and 1.0 in (0.5, 1]
    assert curve.accuracy.tolist() == [1.0, 0.5]
    assert curve.confidence[1] == pytest.approx(0.875)


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    n = 60_000
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < confidence  # right exactly as often as the confidence says
    y = np.where(correct, 0, 1)
    calibrated = np.stack([confidence, 1 - confidence], axis=1)
    assert expected_calibration_error(y, calibrated) < 0.01

    overconfident = np.stack([np.sqrt(confidence), 1 - np.sqrt(confidence)], axis=1)
    assert expected_calibration_error(y, overconfident) > 0.08


def test_auc_above_80_sensitivity_hand_example():
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); TPR 0.8 is reached at FPR 0.5, and TPR is 1 from there on.
    is_positive = np.array([True, True, False, False])
    scores = np.array([0.9, 0.4, 0.6, 0.1])
    assert auc_above_sensitivity(is_positive, scores, 0.80) == pytest.approx(0.5)
    # A sloped segment is interpolated: positives 0.4, 0.9 and one negative 0.5 give ROC (0,.5)->(1,.5)->(1,1)
    is_positive = np.array([True, True, False])
    scores = np.array([0.9, 0.4, 0.5])
    assert auc_above_sensitivity(is_positive, scores, 0.80) == pytest.approx(0.0)


def test_sensitivity_at_specificity_hand_example():
    negatives = np.arange(10) / 10  # 0.0 ... 0.9
    positives = np.array([0.95, 0.85, 0.5])
    scores = np.r_[negatives, positives]
    is_positive = np.r_[np.zeros(10, bool), np.ones(3, bool)]

    at_90 = sensitivity_at_specificity(is_positive, scores, 0.90)
    assert at_90 == pytest.approx({"threshold": 0.85, "sensitivity": 2 / 3, "specificity": 0.9})
    # Lowering the threshold to 0.8 adds a false positive but no true one: the best point stays the same.
    at_80 = sensitivity_at_specificity(is_positive, scores, 0.80)
    assert at_80 == pytest.approx(at_90)
    at_50 = sensitivity_at_specificity(is_positive, scores, 0.50)
    assert at_50 == pytest.approx({"threshold": 0.5, "sensitivity": 1.0, "specificity": 0.5})
    predicted = scores >= at_50["threshold"]
    assert predicted[is_positive].mean() == at_50["sensitivity"]


def test_invalid_inputs_raise_clear_errors():
    y, probs = realistic_predictions(50)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(y, probs[:, :6], LABELS)
    with pytest.raises(ValueError, match="one class index per row"):
        classification_metrics(y[:-1], probs, LABELS)
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        classification_metrics(np.r_[y[:-1], 7], probs, LABELS)
    with pytest.raises(ValueError, match="malignant"):
        classification_metrics(y, probs, LABELS, malignant=["scc"])


# --------------------------------------------------------------------------------------------------
# Bootstrap and subgroups
# --------------------------------------------------------------------------------------------------


def test_vectorised_auc_matches_sklearn_with_weights_and_ties():
    y, probs = realistic_predictions(300, seed=5, decimals=2)  # rounding makes plenty of tied scores
    weights = np.random.default_rng(1).integers(0, 4, size=(6, len(y))).astype(float)
    for k in range(len(LABELS)):
        expected = [roc_auc_score(y == k, probs[:, k], sample_weight=w) for w in weights]
        assert _weighted_auc(y == k, probs[:, k], weights) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    y, probs = realistic_predictions(400, seed=2)
    first = bootstrap_intervals(y, probs, LABELS, n_resamples=300, seed=7)
    again = bootstrap_intervals(y, probs, LABELS, n_resamples=300, seed=7)
    other = bootstrap_intervals(y, probs, LABELS, n_resamples=300, seed=8)
    assert first == again
    assert first["macro_auc"] != other["macro_auc"]
    for key in ["balanced_accuracy", "macro_auc", "melanoma_sensitivity"]:
        interval = first[key]
        assert interval["low"] < interval["estimate"] < interval["high"], key
        assert interval["high"] - interval["low"] < 0.5, key


def test_cluster_bootstrap_treats_duplicated_images_as_one_lesion():
    y, probs = realistic_predictions(300, seed=4)
    per_image = bootstrap_intervals(y, probs, LABELS, n_resamples=200, seed=0)
    # Every lesion photographed 5 times: resampling lesions must give exactly the single-image intervals,
    # while resampling images pretends to have 5x the data and gives narrower intervals.
    y5, probs5 = np.repeat(y, 5), np.repeat(probs, 5, axis=0)
    lesions = [f"lesion_{i:05d}" for i in np.repeat(np.arange(len(y)), 5)]
    per_lesion = bootstrap_intervals(y5, probs5, LABELS, n_resamples=200, seed=0, cluster_ids=lesions)
    naive = bootstrap_intervals(y5, probs5, LABELS, n_resamples=200, seed=0)
    for key in ["balanced_accuracy", "macro_auc", "melanoma_sensitivity"]:
        assert per_lesion[key]["low"] == pytest.approx(per_image[key]["low"], abs=1e-12), key
        assert per_lesion[key]["high"] == pytest.approx(per_image[key]["high"], abs=1e-12), key
        naive_width = naive[key]["high"] - naive[key]["low"]
        assert naive_width < 0.7 * (per_lesion[key]["high"] - per_lesion[key]["low"]), key


def test_paired_difference_is_zero_for_one_model_and_narrower_than_separate_intervals():
    y, probs = realistic_predictions(2000, seed=3)
    same = paired_bootstrap_difference(y, probs, probs, LABELS, n_resamples=200, seed=0)
    for key in ["balanced_accuracy", "macro_auc"]:
        assert same[key] == {"estimate": 0.0, "low": 0.0, "high": 0.0}, key

    # A second model that mostly agrees but fixes a few mistakes: the paired interval of the difference is
    # centred on the true gain and narrower than either model' own intervals.
    rng = np.random.default_rng(1)
    better = probs.copy()
    fix = np.flatnonzero((probs.argmax(1) != y) & (rng.random(len(y)) < 0.1))
    better[fix, y[fix]] = better[fix].max(1) + 0.05
    better /= better.sum(1, keepdims=True)
    difference = paired_bootstrap_difference(y, better, probs, LABELS, n_resamples=300, seed=0)
    gain = balanced_accuracy_score(y, better.argmax(1)) - balanced_accuracy_score(y, probs.argmax(1))
    assert gain > 0 and difference["balanced_accuracy"]["estimate"] == pytest.approx(gain)
    assert 0 <= difference["balanced_accuracy"]["low"] < gain < difference["balanced_accuracy"]["high"]
    separate = bootstrap_intervals(y, probs, LABELS, n_resamples=300, seed=0)["balanced_accuracy"]
    paired_width = difference["balanced_accuracy"]["high"] - difference["balanced_accuracy"]["low"]
    assert paired_width < 0.75 * (separate["high"] - separate["low"])  # unpaired: ~1.4x wider than one model's


def test_subgroup_metrics():
    y, probs = realistic_predictions(300, seed=6)
    groups = np.array(["a"] * 200 + ["b"] * 90 + ["tiny"] * 10)
    y[200:290] = LABELS.index("nv")  # group b: one class only, no melanoma
    result = subgroup_metrics(y, probs, groups, LABELS, min_count=20)

    assert list(result) == ["a", "b", "tiny"]
    a = classification_metrics(y[:200], probs[:200], LABELS, n_bootstrap=0)
    assert result["a"]["n"] == 200
    assert result["a"]["balanced_accuracy"] == pytest.approx(a["balanced_accuracy"])
    assert result["a"]["macro_auc"] == pytest.approx(a["macro_auc"])
    assert result["a"]["melanoma_sensitivity"] == pytest.approx(a["per_class"]["mel"]["sensitivity"])
    assert result["b"]["macro_auc"] is None and result["b"]["melanoma_sensitivity"] is None
    assert result["b"]["accuracy"] == pytest.approx(np.mean(probs[200:290].argmax(1) == y[200:290]))
    assert result["tiny"] == {
        "n": 10,
        "accuracy": None,
        "balanced_accuracy": None,
        "macro_auc": None,
        "melanoma_sensitivity": None,
    }


# --------------------------------------------------------------------------------------------------
# Parity with the reference implementation of the ISIC challenge metrics
# --------------------------------------------------------------------------------------------------


def isic_convention(value: float | None) -> float:
    """The ISIC scorer gives an undefined ratio (e.g. PPV of a never-predicted class) a "freebie" 1.0."""
    return 1.0 if value is None else value


# The ISIC scorer's own deprecation warnings under pandas 3 / numpy 2 (inplace rename, rdp's 2-D cross).
ISIC_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def isic_score(y: np.ndarray, probs: np.ndarray):
    """Score with isic-challenge-scoring's ClassificationScore, built from DataFrames.

    Its CSV entry points (``from_file`` / ``from_stream``) call ``DataFrame.applymap``, which pandas 3
    removed, so the constructor is fed directly with what ``parse_truth_csv`` / ``parse_csv`` would give.
    """
    classification = pytest.importorskip("isic_challenge_scoring.classification")
    index = pd.Index([f"ISIC_{i:07d}" for i in range(len(y))], name="image")
    truth = pd.DataFrame(one_hot(y), index=index, columns=LABELS)
    predictions = pd.DataFrame(probs, index=index, columns=LABELS)
    weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=index)
    return classification.ClassificationScore(
        truth, predictions, weights, classification.ClassificationMetric.BALANCED_ACCURACY
    )


@ISIC_WARNINGS
@pytest.mark.parametrize("decimals", [None, 3], ids=["continuous", "rounded-with-ties"])
def test_parity_with_isic_challenge_scoring(decimals):
    """Our ranking metrics and balanced accuracy equal the ISIC scorer's, to floating-point noise.

    Both call the same scikit-learn functions (the ISIC scorer with all-ones sample weights, which are
    exact in floating point), and the ISIC scorer does no rounding, so we ask for 1e-12. Where a ratio
    is undefined we report None and the ISIC scorer 1.0 (``isic_convention``).

    Definitions differ in one place, aligned here: the ISIC scorer's per-class sensitivity, specificity
    and PPV threshold each class probability at 0.5 on its own, ours use the argmax prediction. Feeding
    the ISIC scorer the one-hot argmax makes the two definitions coincide, so those are compared on that.
    """
    y, probs = realistic_predictions(500, seed=11, decimals=decimals)
    assert np.bincount(y, minlength=len(LABELS)).min() >= 3, "every class needs positives for the AUCs"
    top_two = np.sort(probs, axis=1)[:, -2:]
    assert np.all(top_two[:, 1] > top_two[:, 0]), "an argmax tie would be 'undecided' (wrong) for ISIC"
    if decimals is not None:
        assert len(np.unique(probs[:, MEL])) < len(y) - 20, "the rounded case should contain tied scores"

    ours = classification_metrics(y, probs, LABELS, n_bootstrap=0)
    theirs = isic_score(y, probs)
    theirs_argmax = isic_score(y, one_hot(probs.argmax(axis=1)))

    assert ours["balanced_accuracy"] == pytest.approx(theirs.aggregate["balanced_accuracy"], abs=1e-12)
    assert ours["macro_auc"] == pytest.approx(theirs.macro_average["auc"], abs=1e-12)
    assert ours["auc_above_80_sensitivity"] == pytest.approx(theirs.macro_average["auc_sens_80"], abs=1e-12)
    assert ours["macro_average_precision"] == pytest.approx(theirs.macro_average["ap"], abs=1e-12)
    for code in LABELS:
        mine, ref, ref_argmax = (
            ours["per_class"][code],
            theirs.per_category.loc[code],
            theirs_argmax.per_category.loc[code],
        )
        assert mine["auc"] == pytest.approx(ref["auc"], abs=1e-12), code
        assert mine["auc_above_80_sensitivity"] == pytest.approx(ref["auc_sens_80"], abs=1e-12), code
        assert mine["average_precision"] == pytest.approx(ref["ap"], abs=1e-12), code
        assert isic_convention(mine["sensitivity"]) == pytest.approx(ref_argmax["sensitivity"], abs=1e-12), (
            code
        )
        assert isic_convention(mine["specificity"]) == pytest.approx(ref_argmax["specificity"], abs=1e-12), (
            code
        )
        assert isic_convention(mine["ppv"]) == pytest.approx(ref_argmax["ppv"], abs=1e-12), code
        assert isic_convention(mine["f1"]) == pytest.approx(ref_argmax["dice"], abs=1e-12), (
            code
        )  # F1 is the Dice score


@ISIC_WARNINGS
def test_parity_on_thresholded_metrics_when_every_prediction_is_confident():
    """When every top probability exceeds 0.5, argmax and the ISIC 0.5 threshold make the same predictions."""
    y, probs = realistic_predictions(500, seed=12)
    sharpened = probs**4 / (probs**4).sum(axis=1, keepdims=True)
    confident = sharpened.max(axis=1) > 0.5
    y, sharpened = y[confident], sharpened[confident]
    assert len(y) > 300 and len(np.unique(y)) == len(LABELS)

    ours = classification_metrics(y, sharpened, LABELS, n_bootstrap=0)
    theirs = isic_score(y, sharpened)
    for code in LABELS:
        for key in ["sensitivity", "specificity", "ppv"]:
            assert isic_convention(ours["per_class"][code][key]) == pytest.approx(
                theirs.per_category.loc[code, key]
            ), (
                code,
                key,
            )


# --------------------------------------------------------------------------------------------------
# The evaluation report
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "band"),
    [(0, "<30"), (29.9, "<30"), (30, "30-44"), (44, "30-44"), (45, "45-59"), (74, "60-74"), (75, "75+"),
     (90, "75+"), (np.nan, "unknown"), (None, "unknown"), ("", "unknown")],
)  # fmt: skip
def test_age_band(age, band):
    assert age_band(age) == band


def test_write_evaluation_report(tmp_path):
    y, probs = realistic_predictions(300, seed=9)
    rng = np.random.default_rng(0)
    metadata = pd.DataFrame(
        {
            "sex": rng.choice(["male", "female", None], size=len(y)),
            "age": rng.choice([np.nan, 15.0, 35.0, 50.0, 65.0, 80.0], size=len(y)),
            "localization": rng.choice(["back", "face", "acral"], size=len(y), p=[0.6, 0.37, 0.03]),
            "dx_type": rng.choice(["histo", "follow_up"], size=len(y)),
            "lesion_id": [f"HAM_{i // 2:07d}" for i in range(len(y))],
        },
        index=np.arange(len(y)) + 1000,  # row-aligned, but not with a 0..n-1 index
    )
    out = tmp_path / "report"
    metrics = write_evaluation_report(out, y, probs, LABELS, metadata, title="Test report", n_bootstrap=100)

    for name in ["confusion_matrix.png", "roc_curves.png", "reliability_diagram.png"]:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
    written = json.loads((out / "metrics.json").read_text())
    assert "NaN" not in (out / "metrics.json").read_text()
    assert written["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])
    assert set(written["subgroups"]) == {"sex", "age_band", "localization", "dx_type"}
    assert sum(group["n"] for group in written["subgroups"]["dx_type"].values()) == len(y)
    assert written["subgroups"]["sex"]["unknown"]["n"] == int(pd.isna(metadata["sex"]).sum())
    assert written["confidence_intervals"]["method"].endswith("over clusters")  # lesion_id was used

    report = (out / "report.md").read_text()
    assert report.startswith("# Test report")
    for heading in ["## Headline", "## Per class", "## Operating points", "## Confidence intervals", "## Subgroups",
                    "### Sex", "### Age band", "### Body site", "### How the diagnosis was confirmed"]:  # fmt: skip
        assert heading in report, heading
    for row_start in ["| <30 |", "| 75+ |", "| unknown |", "| female |", "| back |", "| acral |", "| histo |"]:
        assert row_start in report, row_start
    assert report.index("| <30 |") < report.index("| 30-44 |") < report.index("| 75+ |")
    assert f"{metrics['balanced_accuracy']:.3f}" in report


def test_report_without_metadata_has_no_subgroup_tables(tmp_path):
    y, probs = realistic_predictions(120, seed=10)
    metrics = write_evaluation_report(tmp_path, y, probs, LABELS, n_bootstrap=0)
    report = (tmp_path / "report.md").read_text()
    assert metrics["subgroups"] == {}
    assert "### Sex" not in report and "No metadata" in report
    with pytest.raises(ValueError, match="row-aligned"):
        write_evaluation_report(tmp_path, y, probs, LABELS, pd.DataFrame({"sex": ["male"] * 5}))
