"""Classification metrics of the ISIC 2018 challenge (Task 3), calibration, bootstrap intervals and subgroups.
Pure numpy + scikit-learn; every result is a JSON-serialisable dict (undefined values are ``None``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    auc,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

DEFAULT_MALIGNANT: tuple[str, ...] = ("akiec", "bcc", "mel")
SPECIFICITY_TARGETS: tuple[float, ...] = (0.80, 0.90)


# --------------------------------------------------------------------------------------------------
# Input checking and small helpers
# --------------------------------------------------------------------------------------------------


def _check_inputs(
    y_true: Any, probs: Any, labels: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D array [n_samples, n_classes]; got shape {probs.shape}")
    if y_true.ndim != 1 or len(y_true) != len(probs):
        raise ValueError(
            "y_true must be 1-D with one class index per row of probs; "
            f"got shapes {y_true.shape} and {probs.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("no samples: y_true and probs are empty")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}; map codes first")
    if labels is not None and probs.shape[1] != len(labels):
        raise ValueError(f"probs has {probs.shape[1]} columns but {len(labels)} labels were given")
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise ValueError(
            f"y_true values must lie in [0, {probs.shape[1] - 1}]; got {y_true.min()}..{y_true.max()}"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite values")
    return y_true.astype(np.int64), probs


def _json_float(value: Any) -> float | None:
    """A Python float, or None for NaN / None: JSON has no NaN."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else float(numerator) / float(denominator)


def _mean_of_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _has_both_classes(is_positive: np.ndarray) -> bool:
    return 0 < int(is_positive.sum()) < len(is_positive)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityCurve:
    """Top-label reliability per equal-width confidence bin ``(edges[i], edges[i+1]]``.

    ``confidence`` and ``accuracy`` are NaN for empty bins; ``count`` is the number of samples per bin.
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 15) -> ReliabilityCurve:
    """Mean confidence (max probability) and accuracy of the argmax prediction per confidence bin."""
    y_true, probs = _check_inputs(y_true, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are right-closed, (lo, hi], as in Guo et al. 2017; confidence 0 falls in the first bin.
    bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / count
    return ReliabilityCurve(edges, mean_confidence, accuracy, count)


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    curve = reliability_curve(y_true, probs, n_bins)
    filled = curve.count > 0
    gaps = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    return float(np.sum(gaps * curve.count[filled]) / curve.count.sum())


# --------------------------------------------------------------------------------------------------
# Binary (one-vs-rest) score metrics
# --------------------------------------------------------------------------------------------------


def auc_above_sensitivity(
    is_positive: np.ndarray, scores: np.ndarray, min_sensitivity: float = 0.80
) -> float:
    """The ISIC challenge partial AUC: area under the ROC curve right of where TPR first reaches the target.

    Follows ``isic_challenge_scoring.metrics.auc_above_sensitivity``: the full-resolution ROC curve, a point
    interpolated at exactly ``min_sensitivity``, then the trapezoidal area of TPR over FPR from there to
    FPR = 1 (raw, not McClish-normalised). Needs both positives and negatives.
    """
    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}")
    fpr, tpr, _ = roc_curve(is_positive, scores, drop_intermediate=False)
    # tpr[0] == 0 < min_sensitivity, so start >= 1 and the two points around the target exist.
    start = int(np.searchsorted(tpr, min_sensitivity, side="left"))
    fpr_at_target = np.interp(min_sensitivity, tpr[start - 1 : start + 1], fpr[start - 1 : start + 1])
    return float(auc(np.r_[fpr_at_target, fpr[start:]], np.r_[min_sensitivity, tpr[start:]]))


def sensitivity_at_specificity(is_positive: np.ndarray, scores: np.ndarray, min_specificity: float) -> dict:
    """The best operating point with specificity >= ``min_specificity`` on the ROC curve.

    Returns ``{"threshold", "sensitivity", "specificity"}``; predict positive when ``score >= threshold``.
    Values are None when the scores lack positives or negatives.
    """
    if not _has_both_classes(is_positive):
        return {"threshold": None, "sensitivity": None, "specificity": None}
    fpr, tpr, thresholds = roc_curve(is_positive, scores, drop_intermediate=False)
    allowed = np.flatnonzero(fpr <= 1.0 - min_specificity + 1e-12)
    # Among allowed points take the highest TPR; among ties, the lowest FPR (first such point).
    best = allowed[np.argmax(tpr[allowed])]
    # thresholds[0] is +inf (nothing predicted positive); JSON has no infinity, so that becomes None.
    return {
        "threshold": float(thresholds[best]) if np.isfinite(thresholds[best]) else None,
        "sensitivity": float(tpr[best]),
        "specificity": float(1.0 - fpr[best]),
    }


def _score_metrics(is_positive: np.ndarray, scores: np.ndarray) -> dict:
    """AUC, ISIC partial AUC and average precision of one score; None when they are undefined."""
    if not _has_both_classes(is_positive):
        return {"auc": None, "auc_above_80_sensitivity": None, "average_precision": None}
    return {
        "auc": float(roc_auc_score(is_positive, scores)),
        "auc_above_80_sensitivity": auc_above_sensitivity(is_positive, scores, 0.80),
        "average_precision": float(average_precision_score(is_positive, scores)),
    }


def _count_metrics(cm: np.ndarray, k: int) -> dict:
    """One-vs-rest sensitivity, specificity, PPV and F1 of class k from the multiclass confusion matrix."""
    tp = cm[k, k]
    fn = cm[k].sum() - tp
    fp = cm[:, k].sum() - tp
    tn = cm.sum() - tp - fn - fp
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():
        # sklearn warns when a predicted class never occurs in y_true; it is then ignored, as intended.
        warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
        return float(balanced_accuracy_score(y_true, y_pred))


def _macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean one-vs-rest AUC over the classes that have both positives and negatives."""
    aucs = [
        float(roc_auc_score(y_true == k, probs[:, k]))
        for k in range(probs.shape[1])
        if _has_both_classes(y_true == k)
    ]
    return float(np.mean(aucs)) if aucs else None


# --------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------------


def _bootstrap_weights(
    n_samples: int, n_resamples: int, rng: np.random.Generator, cluster_ids: Sequence | None
) -> np.ndarray:
    """[n_resamples, n_samples] multiplicities of each sample in each resample (whole clusters if given)."""
    if cluster_ids is None:
        cluster_of = np.arange(n_samples)
    else:
        if len(cluster_ids) != n_samples:
            raise ValueError(f"cluster_ids has {len(cluster_ids)} entries for {n_samples} samples")
        _, cluster_of = np.unique(np.asarray(cluster_ids, dtype=object).astype(str), return_inverse=True)
    n_clusters = int(cluster_of.max()) + 1
    draws = rng.integers(0, n_clusters, size=(n_resamples, n_clusters))
    offsets = (np.arange(n_resamples) * n_clusters)[:, None]
    cluster_counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_clusters)
    return cluster_counts.reshape(n_resamples, n_clusters)[:, cluster_of].astype(np.float64)


def _weighted_auc(is_positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of sample weights [B, N] at once (ties count 1/2); NaN where a class is missing.

    Equals ``roc_auc_score(is_positive, scores, sample_weight=w)`` per row; vectorised so a 1000-resample
    bootstrap takes milliseconds instead of 1000 scikit-learn calls per class.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    pos_w = weights[:, order] * is_positive[order]
    neg_w = weights[:, order] * ~is_positive[order]
    # Negative weight strictly below, and tied with, each sample: via the start/end of its tie group.
    neg_cum = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(neg_w, axis=1)], axis=1)
    group_start = np.searchsorted(sorted_scores, sorted_scores, side="left")
    group_end = np.searchsorted(sorted_scores, sorted_scores, side="right")
    below = neg_cum[:, group_start]
    tied = neg_cum[:, group_end] - below
    total_pos = pos_w.sum(axis=1)
    total_neg = neg_cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(pos_w * (below + 0.5 * tied), axis=1) / (total_pos * total_neg)


def _percentile_interval(estimate: float | None, samples: np.ndarray, confidence: float) -> dict:
    samples = samples[np.isfinite(samples)]
    if estimate is None or len(samples) == 0:
        return {"estimate": _json_float(estimate), "low": None, "high": None}
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


def _resampled_scores(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray):
    """Per-class recall [B, K], balanced accuracy [B] and macro AUC [B] of each resample (rows of `weights`)."""
    n_classes = probs.shape[1]
    one_hot = np.eye(n_classes)[y_true]
    correct = (probs.argmax(axis=1) == y_true)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (weights @ (one_hot * correct)) / (weights @ one_hot)  # [B, K], NaN if class not drawn
        balanced_accuracy = np.nanmean(recall, axis=1)  # over the classes drawn, as sklearn does
    per_class_auc = np.stack([_weighted_auc(y_true == k, probs[:, k], weights) for k in range(n_classes)], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: the resample is then skipped
        macro_auc = np.nanmean(per_class_auc, axis=1)
    return recall, balanced_accuracy, macro_auc


def paired_bootstrap_difference(
    y_true: Any,
    probs: Any,
    reference_probs: Any,
    labels: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster_ids: Sequence | None = None,
) -> dict:
    """Interval of (model - reference) balanced accuracy and macro AUC, both scored on the same resamples.

    Why paired: two models scored on one ~1,200-image split share most of its luck (the same 15 df
    images), so the interval of their *difference* is far narrower than the two separate intervals suggest;
    this is the honest way to ask whether a change helped.
    """
    y_true, probs = _check_inputs(y_true, probs, labels)
    _, reference_probs = _check_inputs(y_true, reference_probs, labels)
    weights = _bootstrap_weights(len(y_true), n_resamples, np.random.default_rng(seed), cluster_ids)
    _, accuracy, auc = _resampled_scores(y_true, probs, weights)
    _, reference_accuracy, reference_auc = _resampled_scores(y_true, reference_probs, weights)
    accuracy_difference = _balanced_accuracy(y_true, probs.argmax(1)) - _balanced_accuracy(
        y_true, reference_probs.argmax(1))
    aucs = _macro_auc(y_true, probs), _macro_auc(y_true, reference_probs)
    auc_difference = None if None in aucs else aucs[0] - aucs[1]
    return {
        "balanced_accuracy": _percentile_interval(accuracy_difference, accuracy - reference_accuracy, confidence),
        "macro_auc": _percentile_interval(auc_difference, auc - reference_auc, confidence),
        "method": "paired percentile bootstrap" + (" over clusters" if cluster_ids is not None else " over samples"),
        "n_resamples": int(n_resamples),
    }


def bootstrap_intervals(
    y_true: Any,
    probs: Any,
    labels: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster_ids: Sequence | None = None,
) -> dict:
    """Percentile bootstrap intervals for balanced accuracy, macro AUC and melanoma sensitivity (argmax).

    ``cluster_ids`` (e.g. HAM10000's ``lesion_id``) resamples whole clusters, since images of one lesion
    are not independent; without it, images are resampled. Within a resample, macro values average the
    classes drawn; a resample where a metric is undefined (e.g. no melanoma drawn) is left out of that
    interval.
    """
    y_true, probs = _check_inputs(y_true, probs, labels)
    n_samples, n_classes = probs.shape
    rng = np.random.default_rng(seed)
    weights = _bootstrap_weights(n_samples, n_resamples, rng, cluster_ids)

    recall, balanced_accuracy, macro_auc = _resampled_scores(y_true, probs, weights)

    y_pred = probs.argmax(axis=1)
    result = {
        "method": "percentile bootstrap" + (" over clusters" if cluster_ids is not None else " over samples"),
        "n_resamples": int(n_resamples),
        "confidence": float(confidence),
        "seed": int(seed),
        "balanced_accuracy": _percentile_interval(
            _balanced_accuracy(y_true, y_pred), balanced_accuracy, confidence
        ),
        "macro_auc": _percentile_interval(_macro_auc(y_true, probs), macro_auc, confidence),
    }
    if "mel" in labels:
        mel = list(labels).index("mel")
        mel_sensitivity = _ratio(np.sum((y_true == mel) & (y_pred == mel)), np.sum(y_true == mel))
        result["melanoma_sensitivity"] = _percentile_interval(mel_sensitivity, recall[:, mel], confidence)
    return result


# --------------------------------------------------------------------------------------------------
# The full report
# --------------------------------------------------------------------------------------------------


def _operating_points(is_positive: np.ndarray, scores: np.ndarray) -> dict:
    return {
        f"{round(100 * s)}": sensitivity_at_specificity(is_positive, scores, s) for s in SPECIFICITY_TARGETS
    }


def classification_metrics(
    y_true: Any,
    probs: Any,
    labels: Sequence[str],
    malignant: Sequence[str] = DEFAULT_MALIGNANT,
    *,
    n_bins: int = 15,
    n_bootstrap: int = 1000,
    seed: int = 0,
    cluster_ids: Sequence | None = None,
) -> dict:
    """ISIC 2018 Task 3 metrics, melanoma / malignancy operating points, calibration and bootstrap CIs.

    Args:
        y_true: [N] integer class indices into ``labels``.
        probs: [N, K] predicted probabilities, columns in ``labels`` order.
        labels: the K class codes.
        malignant: the codes whose summed probability is the malignancy score.
        n_bins: confidence bins for the ECE.
        n_bootstrap: bootstrap resamples for the confidence intervals (0 disables them).
        seed: seed of the bootstrap.
        cluster_ids: optional [N] cluster (lesion) of each sample, to resample whole lesions.

    Returns a JSON-serialisable dict. Definitions, and where they differ from the reference implementation
    (``isic-challenge-scoring``, whose values tests/test_metrics.py reproduces):

    - Predictions are the argmax of the probabilities (ties go to the first class; the ISIC scorer counts
      a tie as a wrong "undecided" prediction, which does not happen with continuous scores).
    - Balanced accuracy is the mean recall over the classes *present in y_true*, as in scikit-learn and
      the ISIC scorer. A class absent from y_true gets ``None`` for every per-class value that needs
      positives (sensitivity, AUC, AP, ...) and is left out of the macro averages, instead of crashing.
    - Per-class sensitivity / specificity / PPV / F1 are one-vs-rest counts of the argmax prediction. The
      ISIC scorer instead thresholds each class probability at 0.5 on its own (so a sample may be
      predicted as no class, or several); the two agree on one-hot predictions. Where a ratio has a zero
      denominator we return ``None``; the ISIC scorer returns a "freebie" 1.0.
    - ``auc_above_80_sensitivity`` is the ISIC partial AUC (see ``auc_above_sensitivity``), per class and
      macro-averaged; ``macro_*`` values average the classes where they are defined.
    - Melanoma and malignant operating points: the ROC point with the highest sensitivity whose
      specificity is >= 80% / 90%, with its threshold (predict positive when score >= threshold). The
      malignancy score is the summed probability of the ``malignant`` classes.
    """
    y_true, probs = _check_inputs(y_true, probs, labels)
    labels = list(labels)
    unknown = [code for code in malignant if code not in labels]
    if unknown:
        raise ValueError(f"malignant codes {unknown} are not in labels {labels}")
    n_classes = len(labels)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))

    per_class = {}
    for k, code in enumerate(labels):
        is_positive = y_true == k
        per_class[code] = {
            "n": int(is_positive.sum()),
            **_count_metrics(cm, k),
            **_score_metrics(is_positive, probs[:, k]),
        }

    result: dict[str, Any] = {
        "labels": labels,
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_auc": _mean_of_defined([m["auc"] for m in per_class.values()]),
        "macro_average_precision": _mean_of_defined([m["average_precision"] for m in per_class.values()]),
        "auc_above_80_sensitivity": _mean_of_defined(
            [m["auc_above_80_sensitivity"] for m in per_class.values()]
        ),
        "per_class": per_class,
    }

    if "mel" in labels:
        is_mel = y_true == labels.index("mel")
        mel_points = _operating_points(is_mel, probs[:, labels.index("mel")])
        result["melanoma_operating_points"] = mel_points
        for target, point in mel_points.items():
            result[f"melanoma_sensitivity_at_{target}_specificity"] = point["sensitivity"]

    malignant_idx = [labels.index(code) for code in malignant]
    is_malignant = np.isin(y_true, malignant_idx)
    malignant_score = probs[:, malignant_idx].sum(axis=1)
    predicted_malignant = np.isin(y_pred, malignant_idx)
    result["malignant_labels"] = list(malignant)
    result["malignant_auc"] = _score_metrics(is_malignant, malignant_score)["auc"]
    result["malignant_argmax"] = {
        "sensitivity": _ratio(np.sum(predicted_malignant & is_malignant), np.sum(is_malignant)),
        "specificity": _ratio(np.sum(~predicted_malignant & ~is_malignant), np.sum(~is_malignant)),
    }
    result["malignant_operating_points"] = _operating_points(is_malignant, malignant_score)

    result["ece"] = expected_calibration_error(y_true, probs, n_bins)
    result["ece_bins"] = int(n_bins)
    result["confusion_matrix"] = cm.astype(int).tolist()
    if n_bootstrap > 0:
        result["confidence_intervals"] = bootstrap_intervals(
            y_true, probs, labels, n_resamples=n_bootstrap, seed=seed, cluster_ids=cluster_ids
        )
    return result


def subgroup_metrics(
    y_true: Any,
    probs: Any,
    groups: Sequence,
    labels: Sequence[str],
    min_count: int = 20,
) -> dict[str, dict]:
    """Headline metrics per subgroup (e.g. sex, age band, body site), in order of first appearance.

    Groups with fewer than ``min_count`` samples are listed with their ``n`` and every metric ``None``: too
    few to say anything. ``macro_auc`` is None with fewer than two classes present, ``melanoma_sensitivity``
    (argmax) is None without melanomas.
    """
    y_true, probs = _check_inputs(y_true, probs, labels)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(groups) != len(y_true):
        raise ValueError(f"groups has {len(groups)} entries for {len(y_true)} samples")
    labels = list(labels)
    mel = labels.index("mel") if "mel" in labels else None

    result: dict[str, dict] = {}
    for group in dict.fromkeys(groups):  # ordered unique
        mask = groups == group
        y, p = y_true[mask], probs[mask]
        entry: dict[str, Any] = {
            "n": int(mask.sum()),
            "accuracy": None,
            "balanced_accuracy": None,
            "macro_auc": None,
            "melanoma_sensitivity": None,
        }
        if entry["n"] >= min_count:
            y_pred = p.argmax(axis=1)
            entry["accuracy"] = float(accuracy_score(y, y_pred))
            entry["balanced_accuracy"] = _balanced_accuracy(y, y_pred)
            entry["macro_auc"] = _macro_auc(y, p) if len(np.unique(y)) >= 2 else None
            if mel is not None:
                entry["melanoma_sensitivity"] = _ratio(np.sum((y == mel) & (y_pred == mel)), np.sum(y == mel))
        result[str(group)] = entry
    return result


def collection_metrics(
    y_true: Any,
    probs: Any,
    collections: Sequence,
    labels: Sequence[str],
    turned_away: Sequence[bool] | None = None,
    positive: str = "mel",
) -> dict[str, dict]:
    """The external-validation table: per collection (and "all"), the numbers issue 23 asks for.

    Why its own function: an outside collection often lacks some classes (the ISIC 2017-era images hold only
    nv, mel and bkl), so balanced accuracy is the mean recall over the classes *present* in that collection
    (``classes_present`` says which), melanoma AUC is one-vs-rest on the calibrated probabilities, the
    sensitivity is the best one at >= 80% specificity, and ECE is the top-label calibration error.
    ``turned_away`` (optional, one bool per image) is the package gate's "cannot assess" verdict; its share is
    reported, while the other numbers score every image, turned away or not, so they stay comparable across
    models with and without a gate.
    """
    y_true, probs = _check_inputs(y_true, probs, labels)
    collections = np.asarray([str(c) for c in collections], dtype=object)
    if len(collections) != len(y_true):
        raise ValueError(f"collections has {len(collections)} entries for {len(y_true)} samples")
    away = None if turned_away is None else np.asarray(turned_away, dtype=bool)
    labels = list(labels)
    k = labels.index(positive) if positive in labels else None
    result: dict[str, dict] = {}
    groups = list(dict.fromkeys(collections))
    for group in [*groups, "all"] if len(groups) > 1 else groups:
        mask = np.ones(len(y_true), bool) if group == "all" else collections == group
        y, p = y_true[mask], probs[mask]
        is_positive = (y == k) if k is not None else np.zeros(len(y), bool)
        scores = p[:, k] if k is not None else np.zeros(len(y))
        result[str(group)] = {
            "n": int(mask.sum()),
            "classes_present": [labels[i] for i in sorted(np.unique(y))],
            "balanced_accuracy": _balanced_accuracy(y, p.argmax(axis=1)),
            "melanoma_auc": float(roc_auc_score(is_positive, scores)) if _has_both_classes(is_positive) else None,
            "melanoma_sensitivity_at_80_specificity": sensitivity_at_specificity(is_positive, scores, 0.80)[
                "sensitivity"],
            "ece": expected_calibration_error(y, p),
            "turned_away": None if away is None else float(away[mask].mean()),
        }
    return result
