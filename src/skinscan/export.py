"""Export a trained checkpoint to the model-package contract: `skinscan.onnx` (+ the ORT Mobile form).

The graph takes what every client has, uint8 RGB pixels `[N, H, W, 3]`, and does the rest inside:
cast, NHWC->NCHW, normalisation, the network, temperature scaling and softmax. The resize stays outside
(each platform has its own image API); its rule is data, in the metadata (see DESIGN.md).
"""

from __future__ import annotations

import json
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from skinscan import __version__
from skinscan.labels import DIAGNOSES, LABEL_CODES
from skinscan.model import SkinLesionNet
from skinscan.ort_mobile import convert_to_ort
from skinscan.preprocess import PreprocessConfig

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits")
OPSET = 17
TRAINING_DATA = ("HAM10000 (Tschandl et al. 2018, doi:10.1038/sdata.2018.161), the developers' 8,512-image part, "
                 "lesion-grouped train split; licence CC BY-NC-SA 4.0")


class PackagedModel(nn.Module):
    """The network as clients see it: uint8 NHWC pixels in, calibrated probabilities and logits out."""

    def __init__(self, model: SkinLesionNet, temperature: float = 1.0):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / temperature))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = image.permute(0, 3, 1, 2).float()
        logits = self.model(pixels) * self.inverse_temperature
        return torch.softmax(logits, dim=1), logits


def package_metadata(preprocess: PreprocessConfig, model_info: dict, temperature: float,
                     thresholds: dict | None = None, extra: dict | None = None) -> dict[str, str]:
    """The `metadata_props` of the contract: every value a JSON string a client can parse."""
    values = {
        "skinscan.labels": list(LABEL_CODES),
        "skinscan.label_names": {d.code: d.name for d in DIAGNOSES},
        "skinscan.malignant": [d.code for d in DIAGNOSES if d.malignant],
        "skinscan.preprocess": preprocess.to_json(),
        "skinscan.input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                           "normalisation": "inside the graph"},
        "skinscan.outputs": {"probabilities": "softmax(logits), calibrated by temperature scaling on val",
                             "logits": "network logits divided by the temperature"},
        "skinscan.temperature": temperature,
        "skinscan.model": model_info,
        "skinscan.version": __version__,
        "skinscan.exported": date.today().isoformat(),
        "skinscan.training_data": TRAINING_DATA,
        "skinscan.thresholds": thresholds or {},
        "skinscan.disclaimer": "A screening aid, not a diagnosis; see a dermatologist.",
    }
    values.update(extra or {})
    return {key: json.dumps(value) for key, value in values.items()}


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value


def read_metadata(model: onnx.ModelProto) -> dict:
    return {p.key: json.loads(p.value) for p in model.metadata_props if p.key.startswith("skinscan.")}


def export_onnx(model: SkinLesionNet, preprocess: PreprocessConfig, path: str | Path, temperature: float = 1.0,
                metadata: dict[str, str] | None = None) -> Path:
    """Write the fp32 ONNX graph (dynamic batch), check it, and attach the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = PackagedModel(model.cpu().float(), temperature).eval()
    example = torch.zeros(1, *preprocess.size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}})
    graph = onnx.load(str(path))
    graph.doc_string = "skinscan skin-lesion classifier: a screening aid, not a diagnosis."
    set_metadata(graph, metadata or {})
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path


def torch_probabilities(model: SkinLesionNet, images_uint8_nhwc: np.ndarray, temperature: float) -> np.ndarray:
    with torch.no_grad():
        return PackagedModel(model, temperature)(torch.from_numpy(images_uint8_nhwc))[0].numpy()


def malignant_threshold(probabilities: np.ndarray, labels: np.ndarray, min_sensitivity: float = 0.90) -> dict:
    """The highest threshold on P(malignant) that still flags `min_sensitivity` of malignant val images.

    Screening favours sensitivity: a missed melanoma costs far more than an unnecessary check-up.
    """
    malignant = np.array([d.malignant for d in DIAGNOSES])
    score = probabilities[:, malignant].sum(1)
    is_malignant = malignant[labels]
    if not is_malignant.any():
        return {"malignant": 0.5, "malignant_rule": "no malignant images in val; default 0.5"}
    candidates = np.sort(score[is_malignant])[::-1]
    needed = int(np.ceil(min_sensitivity * is_malignant.sum()))
    threshold = float(candidates[needed - 1])
    flagged = score >= threshold
    return {
        "malignant": threshold,
        "malignant_rule": f"flag when P(akiec)+P(bcc)+P(mel) >= threshold; chosen on val for >= {min_sensitivity:.0%} "
                          "sensitivity",
        "malignant_val_sensitivity": float(flagged[is_malignant].mean()),
        "malignant_val_specificity": float((~flagged[~is_malignant]).mean()),
    }


def build_package(checkpoint_path: str | Path, data_dir: str | Path, split_csv: str | Path, out_dir: str | Path,
                  threads: int = 0) -> dict:
    """checkpoint -> a model package folder: calibrated `skinscan.onnx`, its `.ort` form, `manifest.json`.

    The temperature and the malignancy threshold are fitted on the val split (never on test).
    Returns the metadata written into the graph.
    """
    from skinscan.calibration import fit_temperature
    from skinscan.evaluate import checkpoint_logits
    from skinscan.manifest import write_manifest
    from skinscan.model import model_from_checkpoint
    from skinscan.train import load_checkpoint, softmax

    out_dir = Path(out_dir)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    preprocess = PreprocessConfig.from_json(checkpoint["preprocess"])
    val = checkpoint_logits(checkpoint_path, data_dir, split_csv, parts=("val",), threads=threads)["val"]
    temperature = fit_temperature(val["logits"], val["labels"])
    thresholds = malignant_threshold(softmax(val["logits"] / temperature), val["labels"])
    model_info = {**checkpoint["model_config"], "epoch": checkpoint["epoch_metrics"]["epoch"],
                  "val_balanced_accuracy": checkpoint["epoch_metrics"]["val_balanced_accuracy"]}
    metadata = package_metadata(preprocess, model_info, temperature, thresholds)
    onnx_path = export_onnx(model, preprocess, out_dir / "skinscan.onnx", temperature, metadata)
    convert_to_ort(onnx_path)
    write_manifest(out_dir)
    return {key: json.loads(value) for key, value in metadata.items()}
