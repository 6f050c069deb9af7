"""Evaluate a trained checkpoint on one part of the split: calibrate on val, score, write the report.

The test part is only ever read here, after training and model selection are done.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from skinscan.factory.calibration import fit_temperature, fit_temperature_and_bias, negative_log_likelihood
from skinscan.factory.data import DataSource, as_source, read_metadata, read_split, split_with_metadata
from skinscan.factory.metrics import expected_calibration_error
from skinscan.factory.model import model_from_checkpoint
from skinscan.factory.report import plot_reliability_diagram, write_evaluation_report
from skinscan.factory.sources import split_metadata
from skinscan.factory.train import (
    TrainConfig,
    checkpoint_labels,
    load_checkpoint,
    load_split_data,
    predict_logits,
    softmax,
)
from skinscan.runtime.preprocess import PreprocessConfig


def checkpoint_model_and_data(checkpoint_path: str | Path, data_dir: str | Path | DataSource, split_csv: str | Path,
                              parts=("val", "test"), threads: int = 0) -> tuple[dict, torch.nn.Module, dict]:
    """The checkpoint, its model, and the split's parts decoded the way that model reads them.

    Loaded once so a caller scoring several ways (plain and flip-averaged) neither reloads nor re-decodes."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    preprocess = PreprocessConfig.from_json(checkpoint["preprocess"])
    config = TrainConfig(data_dir=str(as_source(data_dir).image_dir), split_csv=str(split_csv), out_dir="",
                         threads=threads, input_size=preprocess.size, resize=preprocess.resize,
                         label_set=checkpoint_labels(checkpoint).to_json())
    if threads:
        torch.set_num_threads(threads)
    return checkpoint, model, load_split_data(config, parts=parts)


def checkpoint_logits(checkpoint_path: str | Path, data_dir: str | Path | DataSource, split_csv: str | Path,
                      parts=("val", "test"), tta: bool = False, threads: int = 0) -> dict:
    """Logits of the checkpoint's model for each part, with the labels (indices into the checkpoint's
    label set) and image ids. `data_dir`: a HAM10000-style folder, a folder of images or a DataSource."""
    _, model, data = checkpoint_model_and_data(checkpoint_path, data_dir, split_csv, parts, threads)
    return {part: {"logits": predict_logits(model, d.images, tta=tta), "labels": d.labels.numpy(),
                   "image_ids": d.image_ids} for part, d in data.items()}


def split_and_metadata(split_csv: str | Path, source: DataSource) -> pd.DataFrame:
    """The split with each image's metadata (age, sex, site; source and collection for a multi-source split),
    for subgroup and per-collection results."""
    split = read_split(split_csv)
    if "source" in split.columns:
        return split_with_metadata(split, split_metadata(split_csv))
    if source.metadata.is_file():
        return split_with_metadata(split, read_metadata(source))
    return split


def compare_calibrators(val_logits: np.ndarray, val_labels: np.ndarray, logits: np.ndarray,
                        labels: np.ndarray) -> list[dict]:
    """ECE and balanced accuracy of raw softmax, temperature (exported) and temperature + per-class bias.

    Why: training shifts the class prior on purpose (for balanced accuracy), which one temperature cannot
    undo; the per-class bias can, at the price of moving the argmax. Showing both keeps that trade visible.
    """
    temperature = fit_temperature(val_logits, val_labels)
    bias_temperature, bias = fit_temperature_and_bias(val_logits, val_labels)
    candidates = {"none (raw softmax)": logits, f"temperature T = {temperature:.3f} (exported)": logits / temperature,
                  f"temperature {bias_temperature:.3f} + per-class bias": logits / bias_temperature + bias}
    return [{"calibrator": name, "ece": expected_calibration_error(labels, softmax(z)),
             "balanced_accuracy": float(balanced_accuracy_score(labels, z.argmax(1)))}
            for name, z in candidates.items()]


def evaluate_checkpoint(checkpoint_path, data_dir, split_csv, out_dir, part: str = "test", tta: bool = False,
                        threads: int = 0) -> dict:
    """Fit the temperature on val, then score `part` with calibrated probabilities; write the report.

    The labels, their names and the malignant ones are the checkpoint's. `data_dir` is a HAM10000-style
    folder, a folder of images or a DataSource; where it has a metadata CSV, its other columns (age, sex,
    site) give subgroup results. Writes `predictions.csv` (image id, true label, calibrated probabilities)
    beside the report so the numbers can be re-scored by anyone, e.g. with isic-challenge-scoring.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ("val",) if part == "val" else ("val", part)
    labels = checkpoint_labels(load_checkpoint(checkpoint_path))
    source = as_source(data_dir)
    results = checkpoint_logits(checkpoint_path, source, split_csv, parts=parts, tta=tta, threads=threads)
    val = results["val"]
    temperature = fit_temperature(val["logits"], val["labels"])
    scored = results[part]
    probabilities = softmax(scored["logits"] / temperature)

    split = split_and_metadata(split_csv, source)
    metadata = split.set_index("image_id").loc[scored["image_ids"]].reset_index()
    metrics = write_evaluation_report(out_dir, scored["labels"], probabilities, list(labels.codes), metadata=metadata,
                                      title=f"skinscan evaluation: {Path(checkpoint_path)} on the {part} split",
                                      malignant=labels.malignant_codes, label_names=labels.names)
    calibration = {
        "temperature": temperature,
        "fitted_on": "val",
        "ece_before": expected_calibration_error(scored["labels"], softmax(scored["logits"])),
        "ece_after": expected_calibration_error(scored["labels"], probabilities),
        "nll_before": negative_log_likelihood(scored["logits"], scored["labels"]),
        "nll_after": negative_log_likelihood(scored["logits"], scored["labels"], temperature),
        "tta": tta,
        "compared": compare_calibrators(val["logits"], val["labels"], scored["logits"], scored["labels"]),
    }
    metrics["calibration"] = calibration
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # The report's reliability diagram is after calibration; this one, before (the raw softmax).
    plot_reliability_diagram(scored["labels"], softmax(scored["logits"]), calibration["ece_before"],
                             metrics["ece_bins"], out_dir / "reliability_diagram_before.png")
    with open(out_dir / "report.md", "a") as f:
        f.write("\n## Calibration (temperature scaling fitted on val)\n\n"
                f"T = {temperature:.3f}; ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}; "
                f"NLL {calibration['nll_before']:.3f} -> {calibration['nll_after']:.3f}\n\n"
                "Before temperature scaling (raw softmax):\n\n![Reliability before](reliability_diagram_before.png)\n\n"
                f"Calibrators compared (fitted on val, scored on {part}; only T is exported):\n\n"
                f"| calibrator | ECE {part} | balanced accuracy {part} |\n|---|---|---|\n"
                + "".join(f"| {row['calibrator']} | {row['ece']:.3f} | {row['balanced_accuracy']:.3f} |\n"
                          for row in calibration["compared"]))
    predictions = pd.DataFrame(probabilities, columns=list(labels.codes))
    predictions.insert(0, "true", [labels.codes[i] for i in scored["labels"]])
    predictions.insert(0, "image_id", scored["image_ids"])
    predictions.to_csv(out_dir / "predictions.csv", index=False, float_format="%.6f")
    np.save(out_dir / "logits.npy", scored["logits"])
    return metrics
