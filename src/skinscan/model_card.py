"""The model card (Mitchell et al. 2019) of a model package, written from the numbers the pipeline measured.

Nothing here is typed in by hand: every figure comes from the package metadata, the evaluation's
`metrics.json` and the package's `quantization.json`, so the card cannot drift from the files it describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from skinscan import DISCLAIMER
from skinscan.report import render_markdown


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(metrics: dict, key: str) -> str:
    interval = metrics.get("confidence_intervals", {}).get(key) or {}
    if interval.get("low") is None:
        return ""
    return f" (95% CI {interval['low']:.3f}-{interval['high']:.3f})"


def _quantization_section(report: dict | None) -> str:
    if not report:
        return "No INT8 model in this package."
    latency = report["latency"]
    rows = [
        "| | FP32 (`skinscan.onnx`) | INT8 (`skinscan-int8.onnx`) |",
        "|---|---|---|",
        f"| size | {report['fp32']['megabytes']:.1f} MB | {report['int8']['megabytes']:.1f} MB |",
        f"| balanced accuracy ({report['evaluated_on']}) | {_fmt(report['fp32']['balanced_accuracy'])} | "
        f"{_fmt(report['int8']['balanced_accuracy'])} |",
        f"| macro AUC ({report['evaluated_on']}) | {_fmt(report['fp32']['macro_auc'])} | "
        f"{_fmt(report['int8']['macro_auc'])} |",
        f"| melanoma sensitivity | {_fmt(report['fp32']['melanoma_sensitivity'])} | "
        f"{_fmt(report['int8']['melanoma_sensitivity'])} |",
        f"| median latency, 1 thread, batch 1 | {latency['fp32']['median_ms']:.2f} ms | "
        f"{latency['int8']['median_ms']:.2f} ms |",
    ]
    settings = report["settings"]
    return "\n".join(rows) + (
        f"\n\nINT8 is {latency['int8_vs_fp32']:.2f}x the speed of FP32 in the same run; top-1 agreement "
        f"{report['top1_agreement']:.3f} on {report['images']} {report['evaluated_on']} images. Static "
        f"quantization ({settings['format']}, per-channel weights, {settings['calibrate_method']} calibration on "
        f"{settings['calibration_images']} training images) plus the graph edits of `skinscan.quantize`."
    )


def render_model_card(package_dir: str | Path, metrics: dict, command: str, notes: str = "") -> str:
    package_dir = Path(package_dir)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(package_dir / "skinscan.onnx")).metadata_props}
    quantization_path = package_dir / "quantization.json"
    quantization = json.loads(quantization_path.read_text()) if quantization_path.is_file() else None
    preprocess, model = meta["skinscan.preprocess"], meta["skinscan.model"]
    thresholds = meta.get("skinscan.thresholds", {})
    calibration = metrics.get("calibration", {})
    mel = metrics["per_class"]["mel"]
    sections = [
        f"# Model card: skinscan {meta['skinscan.version']} ({model['arch']})",
        f"> **{DISCLAIMER}**",
        "## Model details\n\n"
        f"- {model['arch']} (torchvision), ImageNet-pretrained (Google's MobileNetV3 checkpoint, Apache-2.0), "
        "fine-tuned by the skinscan model factory to 7 HAM10000 diagnoses: "
        + ", ".join(f"`{c}` {meta['skinscan.label_names'][c]}" for c in meta["skinscan.labels"]) + ".\n"
        f"- Input: `image`, uint8 `[N, {preprocess['size'][0]}, {preprocess['size'][1]}, 3]` RGB, resize rule "
        f"`{preprocess['resize']}`; normalisation inside the graph. Outputs: `probabilities` (softmax of the logits "
        f"divided by the temperature T = {meta['skinscan.temperature']:.3f}, fitted on the validation split), "
        "`logits`" + (", and `cam`: the Grad-CAM map of the top class, computed in the graph (docs/EXPLAIN.md)"
                      if "cam" in meta.get("skinscan.outputs", {}) else "") + ".\n"
        f"- Malignancy flag: P(akiec)+P(bcc)+P(mel) >= {_fmt(thresholds.get('malignant'))}, chosen on the validation "
        f"split for >= 90% sensitivity (val sensitivity {_fmt(thresholds.get('malignant_val_sensitivity'))}, "
        f"specificity {_fmt(thresholds.get('malignant_val_specificity'))}).\n"
        "- Files: `skinscan.onnx` (FP32), `skinscan-int8.onnx` (static INT8), `manifest.json` (sha256 of each file, "
        "verified at load), `quantization.json`, this card. Licence of the weights: CC BY-NC-SA 4.0, inherited from "
        "the training data (non-commercial use only); the code is Apache-2.0.",
        "## Intended use\n\n"
        "- A **screening aid** for dermoscopic images of single pigmented skin lesions: it suggests which of 7 "
        "diagnoses a dermoscopy photo resembles and flags suspicious ones for a dermatologist. Users: researchers, "
        "ML engineers building screening tools, clinicians evaluating such tools.\n"
        "- **Out of scope**: diagnosis or treatment decisions; ordinary (non-dermoscopic) phone photos; "
        "non-lesion images; lesions outside the 7 classes (e.g. squamous cell carcinoma, which HAM10000 does "
        "not label separately); mucosal, nail or ocular lesions; children (few in HAM10000).",
        "## Factors\n\n"
        "HAM10000 comes from two sites (Vienna, Queensland) and mostly fair-skinned patients: skin types V-VI are "
        "essentially absent, so performance on dark skin is unknown. Dermatoscope model, image quality, body site, "
        "age and sex vary; results by sex, age band and body site are in the quantitative analyses below.",
        "## Metrics\n\n"
        "ISIC 2018 Task 3 metrics (balanced multiclass accuracy as the headline, per-class AUC and sensitivity), "
        "melanoma sensitivity at fixed specificity, malignant-vs-benign AUC and expected calibration error; "
        "95% confidence intervals from a lesion-level bootstrap. The test split has only ~14 df and ~18 vasc "
        "images, so per-class numbers for those move a lot by chance.",
        "## Evaluation data\n\n"
        "Our own lesion-disjoint test split (15% of the lesions of the developers' 8,512-image HAM10000 part, "
        "stratified by diagnosis, every image of a lesion in one part; `skinscan data split --seed 0`). It was "
        "used once, for these numbers, never for training, model selection or calibration.",
        "## Training data\n\n"
        f"{meta['skinscan.training_data']}. Validation split (15% of lesions) for model selection, the temperature "
        "and the malignancy threshold. Tschandl, P., Rosendahl, C. & Kittler, H. The HAM10000 dataset. "
        "Sci. Data 5, 180161 (2018), doi:10.1038/sdata.2018.161; licence CC BY-NC-SA 4.0.",
        "## Quantitative analyses\n\n"
        "| test split | value |\n|---|---|\n"
        f"| balanced accuracy | {_fmt(metrics['balanced_accuracy'])}{_interval(metrics, 'balanced_accuracy')} |\n"
        f"| macro AUC | {_fmt(metrics['macro_auc'])}{_interval(metrics, 'macro_auc')} |\n"
        f"| accuracy | {_fmt(metrics['accuracy'])} |\n"
        f"| melanoma sensitivity (top class) | {_fmt(mel['sensitivity'])} |\n"
        f"| melanoma sensitivity at 80% / 90% specificity | "
        f"{_fmt(metrics.get('melanoma_sensitivity_at_80_specificity'))} / "
        f"{_fmt(metrics.get('melanoma_sensitivity_at_90_specificity'))} |\n"
        f"| malignant-vs-benign AUC | {_fmt(metrics['malignant_auc'])} |\n"
        f"| ECE before / after temperature scaling | {_fmt(calibration.get('ece_before'))} / "
        f"{_fmt(calibration.get('ece_after'))} |\n\n"
        + _quantization_section(quantization),
        "## Ethical considerations\n\n"
        "A false reassurance (a melanoma called benign) can delay treatment: the malignancy flag is tuned for "
        "sensitivity, and the app and CLI always show the disclaimer. The model has not been validated "
        "prospectively or on dark skin and must not be marketed as a medical device. Images never leave the "
        "device: inference runs locally (ONNX Runtime, onnxruntime-web) with no network access.",
        "## Caveats and recommendations\n\n"
        "- Known failure modes of dermoscopy classifiers: surgical ink markings and rulers raise malignancy "
        "scores; non-dermoscopic phone photos, tattoos and non-lesion images are outside the training "
        "distribution and get confident but meaningless answers unless a gate rejects them.\n"
        "- HAM10000 has only ~120 vasc and ~92 df images: rare-class results are uncertain.\n"
        "- Re-evaluate on your own population before any use. INT8 is a quarter of FP32's size; whether it is also "
        "faster depends on the CPU (the table above is one machine): measure with `skinscan benchmark` on yours.",
        "## How to reproduce\n\n```\n" + command.strip() + "\n```" + (f"\n\n{notes}" if notes else ""),
        "---\n\n<details><summary>Full evaluation report (test split)</summary>\n\n"
        + render_markdown(metrics, "Evaluation report").replace("\n# ", "\n### ") + "\n</details>",
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(package_dir: str | Path, evaluation_dir: str | Path, command: str, notes: str = "") -> Path:
    metrics = json.loads((Path(evaluation_dir) / "metrics.json").read_text())
    path = Path(package_dir) / "MODEL_CARD.md"
    path.write_text(render_model_card(package_dir, metrics, command, notes))
    return path
