"""The evaluation report: metrics.json, plots (confusion matrix, ROC curves, reliability) and report.md.
Takes labels and predicted probabilities, so it serves any model (torch or ONNX) without importing one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from skinscan.factory.metrics import classification_metrics, collection_metrics, reliability_curve, subgroup_metrics
from skinscan.labels import LABEL_NAMES, MALIGNANT_CODES

AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", 0, 30),
    ("30-44", 30, 45),
    ("45-59", 45, 60),
    ("60-74", 60, 75),
    ("75+", 75, np.inf),
)
UNKNOWN = "unknown"
# Subgroup (key in metrics.json) -> heading in report.md; "age_band" comes from binning the "age" column.
# "dx_type" is how the label was confirmed (HAM10000: histo, follow_up, consensus, confocal): histopathology
# confirms the lesions that worried a clinician enough to excise them, the hard cases, while follow-up confirms
# only nevi that stayed unchanged; a model can look good overall and still be weak on the histo-confirmed ones.
SUBGROUP_HEADINGS: dict[str, str] = {"sex": "Sex", "age_band": "Age band", "localization": "Body site",
                                     "dx_type": "How the diagnosis was confirmed (dx_type)"}
REPORT_FILES = (
    "metrics.json",
    "confusion_matrix.png",
    "roc_curves.png",
    "reliability_diagram.png",
    "report.md",
)


def write_evaluation_report(
    out_dir: str | Path,
    y_true: Any,
    probs: Any,
    labels: Sequence[str],
    metadata: pd.DataFrame | None = None,
    title: str = "skinscan evaluation report",
    *,
    malignant: Sequence[str] = MALIGNANT_CODES,
    label_names: dict[str, str] | None = None,
    min_subgroup_count: int = 20,
    n_bootstrap: int = 1000,
    seed: int = 0,
    turned_away: Sequence[bool] | None = None,
) -> dict:
    """Write metrics.json, confusion_matrix.png, roc_curves.png, reliability_diagram.png and report.md.

    ``metadata`` (optional) is row-aligned with ``y_true``; its ``sex``, ``age``, ``localization`` and
    ``dx_type`` columns, where present, give subgroup tables, a ``collection`` column the per-collection table
    (with the share the gate turned away when ``turned_away``, one bool per row, is given), and a ``lesion_id``
    column makes the bootstrap resample
    whole lesions. ``malignant`` and ``label_names`` (code -> name) come from the model's label set;
    without names, HAM10000's are used. Returns the metrics dict written to metrics.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(labels)
    metadata = _aligned_metadata(metadata, len(y_true))

    cluster_ids = metadata["lesion_id"].astype(str).tolist() if "lesion_id" in metadata else None
    metrics = classification_metrics(
        y_true, probs, labels, malignant, n_bootstrap=n_bootstrap, seed=seed, cluster_ids=cluster_ids
    )
    metrics["subgroups"] = {
        name: subgroup_metrics(y_true, probs, groups, labels, min_count=min_subgroup_count)
        for name, groups in subgroup_columns(metadata).items()
    }
    metrics["subgroup_min_count"] = min_subgroup_count
    if "collection" in metadata:  # a multi-source split (skinscan.factory.sources): the external-validation table
        metrics["per_collection"] = collection_metrics(y_true, probs, metadata["collection"].tolist(), labels,
                                                       turned_away=turned_away)
    if label_names is not None:
        metrics["label_names"] = {code: label_names.get(code, "") for code in labels}

    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), labels, out_dir / "confusion_matrix.png")
    plot_roc_curves(y_true, probs, labels, malignant, out_dir / "roc_curves.png")
    plot_reliability_diagram(
        y_true, probs, metrics["ece"], metrics["ece_bins"], out_dir / "reliability_diagram.png"
    )
    (out_dir / "report.md").write_text(render_markdown(metrics, title))
    return metrics


# --------------------------------------------------------------------------------------------------
# Subgroups
# --------------------------------------------------------------------------------------------------


def _aligned_metadata(metadata: pd.DataFrame | None, n_samples: int) -> pd.DataFrame:
    if metadata is None:
        return pd.DataFrame(index=range(n_samples))
    if len(metadata) != n_samples:
        raise ValueError(
            f"metadata has {len(metadata)} rows for {n_samples} predictions; it must be row-aligned"
        )
    return metadata.reset_index(drop=True)


def age_band(age: Any) -> str:
    """The report's age band of one age in years ('<30', '30-44', ..., '75+'), or 'unknown'."""
    age = pd.to_numeric(age, errors="coerce")
    if pd.isna(age) or age < 0:
        return UNKNOWN
    return next(name for name, low, high in AGE_BANDS if low <= age < high)


def subgroup_columns(metadata: pd.DataFrame) -> dict[str, list[str]]:
    """The subgroup of each row, per subgroup column present in metadata; missing values are 'unknown'."""
    columns = {}
    if "sex" in metadata:
        columns["sex"] = _category_values(metadata["sex"])
    if "age" in metadata:
        columns["age_band"] = [age_band(age) for age in metadata["age"]]
    if "localization" in metadata:
        columns["localization"] = _category_values(metadata["localization"])
    if "dx_type" in metadata:
        columns["dx_type"] = _category_values(metadata["dx_type"])
    return columns


def _category_values(column: pd.Series) -> list[str]:
    return [UNKNOWN if pd.isna(value) or str(value).strip() == "" else str(value) for value in column]


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot state, no display needed)
# --------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows = true class) with the counts printed in each cell."""
    row_totals = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, row_totals, out=np.zeros(cm.shape, dtype=float), where=row_totals > 0)
    figure = _new_figure(7, 6)
    ax = figure.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), fraction in np.ndenumerate(normalised):
        colour = "white" if fraction > 0.5 else "black"
        ax.text(
            col, row, f"{fraction:.2f}\n({cm[row, col]})", ha="center", va="center", fontsize=8, color=colour
        )
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels)
    ax.set_yticks(
        ticks, [f"{code} (n={total})" for code, total in zip(labels, row_totals.ravel(), strict=True)]
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised; counts in brackets)")
    figure.colorbar(image, ax=ax, fraction=0.046)
    figure.savefig(path, dpi=120)


def plot_roc_curves(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], malignant: Sequence[str], path: Path
) -> None:
    """One-vs-rest ROC curve per class present, plus malignant-vs-benign on the summed malignant score."""
    figure = _new_figure(7, 6)
    ax = figure.add_subplot()
    for k, code in enumerate(labels):
        _plot_roc(ax, y_true == k, probs[:, k], code, linewidth=1.2)
    malignant_idx = [list(labels).index(code) for code in malignant]
    _plot_roc(
        ax,
        np.isin(y_true, malignant_idx),
        probs[:, malignant_idx].sum(axis=1),
        "malignant vs benign",
        linewidth=2.5,
        color="black",
        linestyle="--",
    )
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC curves (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8)
    figure.savefig(path, dpi=120)


def _plot_roc(ax: Any, is_positive: np.ndarray, scores: np.ndarray, name: str, **style: Any) -> None:
    if not 0 < is_positive.sum() < len(is_positive):
        return  # no ROC curve without both positives and negatives
    fpr, tpr, _ = roc_curve(is_positive, scores)
    area = float(auc(fpr, tpr))
    ax.plot(fpr, tpr, label=f"{name} (AUC {area:.3f}, n={int(is_positive.sum())})", **style)


def plot_reliability_diagram(
    y_true: np.ndarray, probs: np.ndarray, ece: float, n_bins: int, path: Path
) -> None:
    """Accuracy per confidence bin (bars), its gap to the bin's mean confidence, and a count histogram."""
    curve = reliability_curve(y_true, probs, n_bins)
    filled = curve.count > 0
    lower, width = curve.bin_edges[:-1], np.diff(curve.bin_edges)
    accuracy, confidence = curve.accuracy[filled], curve.confidence[filled]
    figure = _new_figure(6, 7)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    bar_style = {"width": width[filled], "align": "edge", "edgecolor": "black"}
    top.bar(lower[filled], accuracy, label="accuracy", **bar_style)
    top.bar(
        lower[filled],
        confidence - accuracy,
        bottom=accuracy,
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to mean confidence",
        **bar_style,
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy of the top label")
    top.set_title(f"Reliability diagram (top-label ECE = {ece:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    bottom.bar(lower, curve.count, width=width, align="edge", edgecolor="black", color="tab:grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("count")
    figure.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fmt_interval(interval: dict | None) -> str:
    if not interval or interval.get("low") is None:
        return "—"
    return f"{interval['low']:.3f} – {interval['high']:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _headline_section(metrics: dict) -> str:
    intervals = metrics.get("confidence_intervals", {})
    rows = [
        ("Images", metrics["n"], ""),
        ("Accuracy", _fmt(metrics["accuracy"]), ""),
        (
            "Balanced accuracy (ISIC 2018 ranking metric)",
            _fmt(metrics["balanced_accuracy"]),
            _fmt_interval(intervals.get("balanced_accuracy")),
        ),
        ("Macro AUC", _fmt(metrics["macro_auc"]), _fmt_interval(intervals.get("macro_auc"))),
        ("Macro AUC above 80% sensitivity", _fmt(metrics["auc_above_80_sensitivity"]), ""),
        ("Macro average precision", _fmt(metrics["macro_average_precision"]), ""),
        ("Malignant-vs-benign AUC", _fmt(metrics["malignant_auc"]), ""),
        ("Expected calibration error (top label)", _fmt(metrics["ece"]), ""),
    ]
    return "## Headline\n\n" + _table(["Metric", "Value", "95% CI"], rows)


def _per_class_section(metrics: dict) -> str:
    rows = []
    for code, m in metrics["per_class"].items():
        name = metrics.get("label_names", LABEL_NAMES).get(code, "")
        rows.append(
            [
                code,
                name,
                m["n"],
                _fmt(m["sensitivity"]),
                _fmt(m["specificity"]),
                _fmt(m["ppv"]),
                _fmt(m["f1"]),
                _fmt(m["auc"]),
                _fmt(m["auc_above_80_sensitivity"]),
                _fmt(m["average_precision"]),
            ]
        )
    header = [
        "Code",
        "Diagnosis",
        "n",
        "Sensitivity",
        "Specificity",
        "PPV",
        "F1",
        "AUC",
        "AUC >80% sens.",
        "AP",
    ]
    note = (
        "Sensitivity, specificity, PPV and F1 are for the argmax prediction (one class vs the rest); "
        "AUC, AP and the partial AUC above 80% sensitivity rank the class probability. "
        "— means undefined (e.g. a class with no images)."
    )
    return "## Per class\n\n" + _table(header, rows) + "\n\n" + note


def _operating_points_table(points: dict) -> str:
    rows = [
        [f">= {target}%", _fmt(p["threshold"], 4), _fmt(p["sensitivity"]), _fmt(p["specificity"])]
        for target, p in points.items()
    ]
    return _table(["Target specificity", "Threshold", "Sensitivity", "Specificity"], rows)


def _operating_points_section(metrics: dict) -> str:
    parts = ["## Operating points"]
    if "melanoma_operating_points" in metrics:
        parts.append(
            "**Melanoma** (score = P(mel); predict melanoma when score >= threshold):\n\n"
            + _operating_points_table(metrics["melanoma_operating_points"])
        )
    malignant = ", ".join(metrics["malignant_labels"])
    argmax = metrics["malignant_argmax"]
    parts.append(
        f"**Malignant vs benign** (score = P({' + '.join(metrics['malignant_labels'])}); "
        f"AUC {_fmt(metrics['malignant_auc'])}):\n\n"
        + _operating_points_table(metrics["malignant_operating_points"])
        + f"\n\nAt the argmax prediction (predicted class in {{{malignant}}}): sensitivity "
        f"{_fmt(argmax['sensitivity'])}, specificity {_fmt(argmax['specificity'])}."
    )
    return "\n\n".join(parts)


def _intervals_section(metrics: dict) -> str:
    intervals = metrics.get("confidence_intervals")
    if not intervals:
        return "## Confidence intervals\n\nNot computed (bootstrap disabled)."
    names = {
        "balanced_accuracy": "Balanced accuracy",
        "macro_auc": "Macro AUC",
        "melanoma_sensitivity": "Melanoma sensitivity (argmax)",
    }
    rows = [
        [label, _fmt(intervals[key]["estimate"]), _fmt_interval(intervals[key])]
        for key, label in names.items()
        if key in intervals
    ]
    note = (
        f"{round(100 * intervals['confidence'])}% {intervals['method']}, "
        f"{intervals['n_resamples']} resamples, seed {intervals['seed']}."
    )
    return "## Confidence intervals\n\n" + _table(["Metric", "Estimate", "Interval"], rows) + "\n\n" + note


def _subgroup_section(metrics: dict) -> str:
    subgroups = metrics.get("subgroups") or {}
    if not subgroups:
        return "## Subgroups\n\nNo metadata with sex, age, body site or confirmation type was given."
    band_order = [name for name, _, _ in AGE_BANDS] + [UNKNOWN]
    parts = [
        "## Subgroups",
        f"Groups with fewer than {metrics['subgroup_min_count']} images are listed without metrics (—).",
    ]
    for column, groups in subgroups.items():
        if column == "age_band":
            names = sorted(groups, key=band_order.index)
        else:
            names = sorted(groups, key=lambda g: (-groups[g]["n"], g))
        rows = [
            [
                name,
                groups[name]["n"],
                _fmt(groups[name]["accuracy"]),
                _fmt(groups[name]["balanced_accuracy"]),
                _fmt(groups[name]["macro_auc"]),
                _fmt(groups[name]["melanoma_sensitivity"]),
            ]
            for name in names
        ]
        header = ["Group", "n", "Accuracy", "Balanced accuracy", "Macro AUC", "Melanoma sensitivity"]
        parts.append(f"### {SUBGROUP_HEADINGS.get(column, column)}\n\n" + _table(header, rows))
    return "\n\n".join(parts)


def collection_section(metrics: dict, heading: str = "## Per collection") -> str:
    """The per-collection table (external validation); empty when the split has no collection column."""
    table = metrics.get("per_collection")
    if not table:
        return ""
    rows = [(name, m["n"], ", ".join(m["classes_present"]), _fmt(m["balanced_accuracy"]), _fmt(m["melanoma_auc"]),
             _fmt(m["melanoma_sensitivity_at_80_specificity"], 2), _fmt(m["ece"]),
             "-" if m.get("turned_away") is None else f"{m['turned_away']:.1%}") for name, m in table.items()]
    return (f"{heading}\n\nBalanced accuracy is the mean recall over the classes present in that collection; "
            "melanoma AUC is one-vs-rest; sensitivity is melanoma's at >= 80% specificity; \"turned away\" is the "
            "share the package's gate answered \"cannot assess\" (every image is scored either way).\n\n"
            + _table(("collection", "n", "classes present", "balanced accuracy", "melanoma AUC",
                      "sensitivity at 80% specificity", "ECE", "turned away"), rows))


def _figures_section() -> str:
    return (
        "## Figures\n\n"
        "![Confusion matrix](confusion_matrix.png)\n\n"
        "![ROC curves](roc_curves.png)\n\n"
        "![Reliability diagram](reliability_diagram.png)"
    )


def render_markdown(metrics: dict, title: str) -> str:
    """report.md from the metrics dict written to metrics.json."""
    intro = (
        f"# {title}\n\n"
        "Metrics as defined by the ISIC 2018 challenge, Task 3 (lesion diagnosis), computed by "
        "`skinscan.factory.metrics`; all numbers are also in `metrics.json`. A screening aid, not a diagnosis."
    )
    sections = [
        intro,
        _headline_section(metrics),
        _per_class_section(metrics),
        _operating_points_section(metrics),
        _intervals_section(metrics),
        _subgroup_section(metrics),
        collection_section(metrics),
        _figures_section(),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"
