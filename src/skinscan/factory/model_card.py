"""The model card (Mitchell et al. 2019) of a model package, written from the numbers the pipeline measured.

Nothing here is typed in by hand: every figure comes from the package metadata, the evaluation's
`metrics.json` and the package's `quantization.json` and `gate.json`, so the card cannot drift from the files it
describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from skinscan import DISCLAIMER
from skinscan.factory.report import collection_section, render_markdown
from skinscan.runtime.assess import DERMOSCOPY


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
        f"\n\nINT8 was {latency['int8_vs_fp32']:.2f}x the speed of FP32 in `skinscan quantize`'s own run (one short "
        "measurement; on a shared machine they scatter by +-30%, so benchmark on yours); top-1 agreement "
        f"{report['top1_agreement']:.3f} on {report['images']} {report['evaluated_on']} images. Static "
        f"quantization ({settings['format']}, per-channel weights, {settings['calibrate_method']} calibration on "
        f"{settings['calibration_images']} training images) plus the graph edits of `skinscan.factory.quantize`."
    )


def _gate_section(gate: dict | None) -> str:
    """The "cannot assess" figures of `skinscan gate` (gate.json), per precision."""
    if not gate:
        return ("This package has no \"cannot assess\" gate: it answers every image with a diagnosis, including "
                "images that are not lesions. Re-export it with `skinscan export`.")
    first = next(iter(gate.values()))
    groups = list(first["non_lesions"]["groups"])
    header = "| | " + " | ".join(precision.upper() for precision in gate) + " |"
    rows = [header, "|---" * (len(gate) + 1) + "|"]

    def row(label, cell):
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in gate.values()) + " |")

    def share(summary):
        return f"{summary['rejected']}/{summary['images']} ({summary['rejected_share']:.1%})"

    row(f"{first['part']} lesions turned away (goal <= 2%)", lambda r: share(r["lesions"]))
    if "external" in first:
        row("external collection (ISIC 2017-era, 256 px; never fitted on) turned away (goal <= 5%)",
            lambda r: share(r["external"]))
        for collection in first["external"]["by_collection"]:
            row(f"&nbsp;&nbsp;{collection}", lambda r, c=collection: share(r["external"]["by_collection"][c]))
        for name in first["external"]["degradations"]:
            row(f"external lesions, {name}", lambda r, n=name: share(r["external"]["degradations"][n]))
    row("non-lesion images turned away (goal >= 95%)", lambda r: share(r["non_lesions"]))
    for group in groups:
        row(f"&nbsp;&nbsp;{group}", lambda r, g=group: share(r["non_lesions"]["groups"][g]))
    if "ordinary_skin_photos" in first:
        row("ordinary photos of skin (held-out portrait) turned away / as `not_dermoscopic`",
            lambda r: f"{share(r['ordinary_skin_photos'])} / {r['ordinary_skin_photos']['not_dermoscopic_share']:.0%}")
    for name in first["degradations"]:
        row(f"lesions, {name}", lambda r, n=name: share(r["degradations"][n]))
    accepted = sorted({name for r in gate.values() for name in r["non_lesions"]["accepted"]})
    thresholds = first["thresholds"]
    accepted_line = f" Accepted non-lesion images: {', '.join(accepted)}." if accepted else ""
    if "dermoscopy" not in thresholds.get("scores", []):
        return (
            "A screening tool must not answer every photo. Before it is shown, each result passes a gate computed "
            "in the graph (the `assess` output, `skinscan/factory/gate.py`): the distance of early feature "
            "statistics from the training lesions' (Mahalanobis, blocks 4-5), sharpness (variance of the "
            "Laplacian), brightness and colourfulness, plus a minimum image size. Failing any check gives "
            "\"cannot assess\" with the reason (`not_a_lesion`, `too_blurry`, `too_dark`, `too_bright`, "
            "`too_small`) instead of a diagnosis, in the CLI, the Python API and the app. Thresholds were chosen on "
            "the validation split (each quality check turns away 0.25% of val lesions; the distance takes the rest "
            f"of a {thresholds.get('budget', 0.015):.1%} budget, below the 2% goal to leave room for sampling "
            "noise); `skinscan quantize` re-fits the distance threshold on the INT8 model's own val scores.\n\n"
            + "\n".join(rows) + "\n\n"
            "Non-lesion images: the sample images shipped with scikit-image, scikit-learn and matplotlib (people, "
            "animals, objects, microscopy, a retina photo, astronomy, text), their quadrant crops, and skin "
            "close-ups cropped from the two portraits among them (`skinscan/factory/nonlesion.py`); degradations: "
            "the same test lesions blurred, darkened, overexposed or shrunk. Caveat: this corpus was also used to "
            "choose the design (which blocks; adding colourfulness after grey images passed), so its rate is "
            "optimistic for images unlike it; the lesion rate is an honest held-out figure." + accepted_line
        )
    return (
        "A screening tool must not answer every photo. Before it is shown, each result passes a gate computed in "
        "the graph (the `assess` output, `skinscan/factory/gate.py` and `skinscan/factory/regate.py`): the "
        "distance of early feature statistics from dermoscopic lesions' (Mahalanobis, blocks 4-5), how "
        "dermoscopic the image looks, sharpness (variance of the Laplacian), brightness and colourfulness, plus a "
        "minimum image size. Failing any check gives \"cannot assess\" with the reason (`not_a_lesion`, "
        "`not_dermoscopic`, `too_blurry`, `too_dark`, `too_bright`, `too_small`) instead of a diagnosis, in the "
        "CLI, the Python API and the app. The lesion distance is a Gaussian over all training sources "
        "(HAM10000's train part and the ISIC 2019 images outside the external collection), each image also seen "
        "as another device would take it (lower resolution, slight blur, exposure, contrast and white balance "
        "shifts, a circular vignette, rotation); the `dermoscopy` score is a logistic regression on the "
        "classifier's pooled features (or, in older fits, on the same statistics), dermoscopy against ordinary "
        "photos of skin and, when fitted with `--negatives`, generic photos from Debian packages. `skinscan "
        "regate` fits both from the package's graphs; the lines are drawn on the validation lesions of each "
        f"source: {thresholds.get('rule', 'see skinscan.assess in the graph')}.\n\n" + "\n".join(rows) + "\n\n"
        "Non-lesion images: the sample images shipped with scikit-image, scikit-learn and matplotlib (people, "
        "animals, objects, microscopy, a retina photo, astronomy, text), their quadrant crops, and skin "
        "close-ups cropped from the two portraits among them (`skinscan/factory/nonlesion.py`); degradations: the "
        "same test lesions blurred, darkened, overexposed, shrunk or brought to 84 px and back (a low-resolution "
        "device; the blur check refuses most of it: at the model's input it is as soft as a blurred photo). "
        "Ordinary photos of skin: the only licensed ones a package ships are the two portraits among the sample "
        "images, so the dermoscopy score is fitted on 300 random skin crops of one (scikit-image's astronaut) "
        "and measured on 100 crops of the other (matplotlib's Grace Hopper): a small set of two faces, which "
        "says little about rashes, other skin tones or other cameras. Caveat: the non-lesion corpus was also "
        "used to choose the design, so its rate is optimistic for images unlike it; the lesion rates are honest "
        "held-out figures." + accepted_line
    )


def _subgroup_table(metrics: dict) -> str:
    subgroups = metrics.get("subgroups") or {}
    rows = ["| factor | group | images | balanced accuracy | macro AUC | melanoma sensitivity |",
            "|---|---|---|---|---|---|"]
    for factor, groups in subgroups.items():
        for group, m in groups.items():
            if m.get("balanced_accuracy") is None:
                continue
            rows.append(f"| {factor.replace('_', ' ')} | {group} | {m['n']} | {_fmt(m['balanced_accuracy'])} | "
                        f"{_fmt(m['macro_auc'])} | {_fmt(m['melanoma_sensitivity'])} |")
    return "\n".join(rows) if len(rows) > 2 else "No subgroup results in the evaluation report."


def _safety_section(gate: dict | None, metrics: dict, external: dict | None = None) -> str:
    from skinscan.factory.hostile import HOSTILE_INPUTS  # the corpus tests/test_hostile.py sends through every path

    hostile = HOSTILE_INPUTS
    refused = [entry.why for entry in hostile if entry.expect == "refuse"]
    classified = [entry.why for entry in hostile if entry.expect == "classify"]
    calibration = metrics.get("calibration", {})
    after = calibration.get("ece_after")
    return (
        "## Limitations and safety\n\n"
        "### \"Cannot assess\"\n\n" + _gate_section(gate) + "\n\n"
        "### Calibration\n\n"
        f"Temperature scaling fitted on validation: expected calibration error on the test split "
        f"{_fmt(calibration.get('ece_before'))} before, {_fmt(after)} after (goal <= 0.05: "
        f"{'met' if after is not None and after <= 0.05 else 'not met'}); reliability diagram in the evaluation "
        "report. Probabilities are estimates from a 1,277-image test split, not guarantees.\n\n"
        "### Hostile inputs\n\n"
        f"{len(hostile)} hostile or unusual files (`skinscan/factory/hostile.py`) go through `Classifier.classify`, "
        "`skinscan predict` and the app's photo upload in CI (tests/test_hostile.py); none crashes or hangs, and "
        f"`predict` over all of them stays under 1.5 GB. Refused with a message naming the problem ({len(refused)}): "
        + "; ".join(refused) + f". Classified like any photo ({len(classified)}): " + "; ".join(classified) + ".\n\n"
        "### Results by subgroup (test split; groups under "
        f"{metrics.get('subgroup_min_count', 20)} images omitted)\n\n" + _subgroup_table(metrics) + "\n\n"
        "### Known failure modes\n\n"
        "- **Skin types**: HAM10000 is mostly fair skin from Austria and Australia; Fitzpatrick V-VI are "
        "essentially absent. Accuracy and the gate on dark skin are unknown.\n"
        "- **Surgical ink markings, rulers, hair, bubbles**: dermoscopy classifiers learn them as shortcuts "
        "(ink markings raise melanoma scores); the gate does not look for them.\n"
        "- **Non-dermoscopic phone photos**: the model was trained on dermoscopy only. The gate turns many such "
        "photos away (" + ("`not_dermoscopic` or `not_a_lesion`" if _has_dermoscopy_check(gate) else
                           "as `not_a_lesion`: this package has no `not_dermoscopic` check")
        + "), but a close, sharp, well-lit phone photo of a mole can pass it and get an unreliable answer.\n"
        "- **Rare classes**: df and vasc have 14 and 18 test images; their figures are uncertain."
        + _away_from_home(metrics, external)
    )


def _has_dermoscopy_check(gate: dict | None) -> bool:
    """Whether the package's gate has the dermoscopy score (`skinscan regate`), from gate.json's thresholds."""
    report = next(iter((gate or {}).values()), {})
    return DERMOSCOPY in (report.get("thresholds") or {}).get("scores", [])


def _away_from_home(metrics: dict, external: dict | None) -> str:
    """The failure-mode line for other clinics and devices, from the external evaluation's own figures."""
    overall = (external or {}).get("per_collection", {}).get("all")
    if not overall:
        return ""
    mel = metrics.get("per_class", {}).get("mel", {})
    turned = overall.get("turned_away")
    return (
        f"\n- **Other clinics and dermatoscopes**: on {overall['n']:,} dermoscopic images from collections it never "
        f"trained on (external validation above) balanced accuracy is {_fmt(overall['balanced_accuracy'])} (over "
        f"the classes present) and melanoma AUC {_fmt(overall['melanoma_auc'])}, against "
        f"{_fmt(metrics['balanced_accuracy'])} and {_fmt(mel.get('auc'))} on the HAM10000 test split; its "
        f"probabilities are less reliable there (ECE {_fmt(overall['ece'])})"
        + (f", and the gate turns away {turned:.1%} of those lesions" if turned is not None else "") + "."
    )


def _sources_and_licences(meta: dict, external: dict | None) -> str:
    """Which data sets the model saw, for what, under which licence (all non-commercial)."""
    trained_on_isic = "isic" in str(meta.get("skinscan.training_data", "")).lower()
    isic_use = "training" if trained_on_isic else ("external validation only" if external else None)
    lines = ["Data sources and licences (all non-commercial: the weights inherit it):",
             "- HAM10000 (Vienna, Queensland; Tschandl et al. 2018): training, validation and the test split; "
             "CC BY-NC-SA 4.0."]
    if isic_use:
        lines.append(f"- ISIC 2019 challenge images that are not HAM10000 (BCN20000, Combalia et al. 2019; MSK and the "
                     f"ISIC Archive, Codella et al. 2017): {isic_use}; CC BY-NC 4.0." + (
                         " Most of the copy used here is 84x84 px (the originals are up to 1024 px), so the model "
                         "learned those sources from blurred images." if trained_on_isic else ""))
    return "\n".join(lines)


def _in_graph_preprocessing(model: dict) -> str:
    """What the graph does to the pixels before the network, so embedders do not do it a second time."""
    if model.get("color_constancy", "none") == "shades_of_gray":
        return ("Shades-of-Gray colour constancy (each image's illuminant, Minkowski p = 6, divided out) and "
                "normalisation inside the graph: feed plain RGB pixels")
    return "normalisation inside the graph"


def package_metadata(model_path: Path) -> dict:
    """Every metadata entry of the ONNX file, parsed from its JSON string.

    Read with ONNX Runtime, not the onnx package, so `skinscan card` needs only the `report` extra.
    """
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}


def _external_section(metrics: dict, external: dict | None) -> str:
    """The external-validation table (issue 23): per collection, from an evaluation of a multi-source split's
    `external` part (`--external-evaluation`), else from the main evaluation when its split has collections."""
    chosen = external if external and external.get("per_collection") else metrics
    table = collection_section(chosen, heading="## External validation")
    if not table:
        return ""
    where = (f"the `{chosen.get('part', 'external')}` part of a multi-source split (`skinscan data split --source "
             "... --external ...`), collections no model trained, selected or calibrated on"
             if chosen is external else "the evaluation above, by collection")
    return f"{table}\n\nScored on {where}; command: `skinscan evaluate --part external` (docs/RESULTS.md)."


def render_model_card(package_dir: str | Path, metrics: dict, command: str, notes: str = "",
                      external: dict | None = None) -> str:
    package_dir = Path(package_dir)
    meta = package_metadata(package_dir / "skinscan.onnx")
    quantization_path = package_dir / "quantization.json"
    quantization = json.loads(quantization_path.read_text()) if quantization_path.is_file() else None
    gate_path = package_dir / "gate.json"
    gate = json.loads(gate_path.read_text()) if gate_path.is_file() else None
    preprocess, model = meta["skinscan.preprocess"], meta["skinscan.model"]
    thresholds = meta.get("skinscan.thresholds", {})
    calibration = metrics.get("calibration", {})
    mel = metrics["per_class"]["mel"]
    sections = [
        f"# Model card: skinscan {meta['skinscan.version']} ({model['arch']})",
        f"> **{DISCLAIMER}**",
        "## Model details\n\n"
        f"- {model['arch']} (torchvision), ImageNet-pretrained (Google's MobileNetV3 checkpoint, Apache-2.0), "
        f"fine-tuned by the skinscan model factory to {len(meta['skinscan.labels'])} diagnoses: "
        + ", ".join(f"`{c}` {meta['skinscan.label_names'][c]}" for c in meta["skinscan.labels"]) + ".\n"
        f"- Input: `image`, uint8 `[N, {preprocess['size'][0]}, {preprocess['size'][1]}, 3]` RGB, resize rule "
        f"`{preprocess['resize']}`; {_in_graph_preprocessing(model)}. Outputs: `probabilities` (softmax of the logits "
        f"divided by the temperature T = {meta['skinscan.temperature']:.3f}, fitted on the validation split), "
        "`logits`" + (", and `cam`: the Grad-CAM map of the top class, computed in the graph (docs/EXPLAIN.md)"
                      if "cam" in meta.get("skinscan.outputs", {}) else "") + ".\n"
        f"- Malignancy flag: P(akiec)+P(bcc)+P(mel) >= {_fmt(thresholds.get('malignant'))}, chosen on the validation "
        f"split for >= 90% sensitivity (val sensitivity {_fmt(thresholds.get('malignant_val_sensitivity'))}, "
        f"specificity {_fmt(thresholds.get('malignant_val_specificity'))}).\n"
        "- Files: `skinscan.onnx` (FP32), `skinscan-int8.onnx` (static INT8), `manifest.json` (sha256 of each file, "
        "verified at load), `quantization.json`, `gate.json` (the \"cannot assess\" measurements), this card. "
        "Licence of the weights: CC BY-NC-SA 4.0, inherited from "
        "the training data (non-commercial use only); the code is Apache-2.0.",
        "## Intended use\n\n"
        "- A **screening aid** for dermoscopic images of single pigmented skin lesions: it suggests which of "
        f"{len(meta['skinscan.labels'])} "
        "diagnoses a dermoscopy photo resembles and flags suspicious ones for a dermatologist. Users: researchers, "
        "ML engineers building screening tools, clinicians evaluating such tools.\n"
        "- **Out of scope**: diagnosis or treatment decisions; ordinary (non-dermoscopic) phone photos; "
        "non-lesion images; lesions outside its classes (e.g. squamous cell carcinoma, which HAM10000 does "
        "not label separately); mucosal, nail or ocular lesions; children (few in HAM10000).",
        "## Factors\n\n"
        "HAM10000 comes from two sites (Vienna, Queensland) and mostly fair-skinned patients: skin types V-VI are "
        "essentially absent, so performance on dark skin is unknown. Dermatoscope model, image quality, body site, "
        "age and sex vary; results by sex, age band and body site are in the quantitative analyses below. So are "
        "results by how the diagnosis was confirmed: histopathology for the lesions a clinician excised (the "
        "hard cases, and every melanoma), follow-up for nevi that stayed unchanged, expert consensus or confocal "
        "microscopy otherwise; accuracy on histopathology-confirmed lesions is the figure closest to the lesions "
        "that worry people.",
        "## Metrics\n\n"
        "ISIC 2018 Task 3 metrics (balanced multiclass accuracy as the headline, per-class AUC and sensitivity), "
        "melanoma sensitivity at fixed specificity, malignant-vs-benign AUC and expected calibration error; "
        "95% confidence intervals from a lesion-level bootstrap. The test split has only ~14 df and ~18 vasc "
        "images, so per-class numbers for those move a lot by chance.",
        "## Evaluation data\n\n"
        "Our own lesion-disjoint test split (15% of the lesions of the developers' 8,512-image HAM10000 part, "
        "stratified by diagnosis, every image of a lesion in one part; `skinscan data split --seed 0`). It was "
        "used only to report results, never for training, model selection or calibration; every look at it is "
        "listed in the repository's docs/RESULTS.md.",
        "## Training data\n\n"
        f"{meta['skinscan.training_data']}. Validation split (15% of lesions) for model selection, the temperature "
        "and the malignancy threshold. Tschandl, P., Rosendahl, C. & Kittler, H. The HAM10000 dataset. "
        "Sci. Data 5, 180161 (2018), doi:10.1038/sdata.2018.161; licence CC BY-NC-SA 4.0.\n\n"
        + _sources_and_licences(meta, external),
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
        _external_section(metrics, external),
        _safety_section(gate, metrics, external),
        "## Ethical considerations\n\n"
        "A false reassurance (a melanoma called benign) can delay treatment: the malignancy flag is tuned for "
        "sensitivity, and the app and CLI always show the disclaimer. The model has not been validated "
        "prospectively or on dark skin and must not be marketed as a medical device. Images never leave the "
        "device: inference runs locally (ONNX Runtime, onnxruntime-web) with no network access.",
        "## Caveats and recommendations\n\n"
        "- Known failure modes: see \"Limitations and safety\" above.\n"
        "- HAM10000 has only ~120 vasc and ~92 df images: rare-class results are uncertain.\n"
        "- Re-evaluate on your own population before any use. INT8 is a quarter of FP32's size; whether it is also "
        "faster depends on the CPU (the table above is one machine): measure with `skinscan benchmark` on yours.",
        "## How to reproduce\n\n```\n" + command.strip() + "\n```" + (f"\n\n{notes}" if notes else ""),
        "---\n\n<details><summary>Full evaluation report (test split)</summary>\n\n"
        + render_markdown(metrics, "Evaluation report").replace("\n# ", "\n### ") + "\n</details>",
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def write_model_card(package_dir: str | Path, evaluation_dir: str | Path, command: str, notes: str = "",
                     external_dir: str | Path | None = None) -> Path:
    """MODEL_CARD.md from the evaluation's metrics.json (and, for the external-validation table, an
    evaluation of the external part in `external_dir`)."""
    metrics = json.loads((Path(evaluation_dir) / "metrics.json").read_text())
    external = json.loads((Path(external_dir) / "metrics.json").read_text()) if external_dir else None
    path = Path(package_dir) / "MODEL_CARD.md"
    path.write_text(render_model_card(package_dir, metrics, command, notes, external=external))
    return path
