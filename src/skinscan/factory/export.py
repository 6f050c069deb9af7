"""Export a trained checkpoint to the model-package contract: `skinscan.onnx` (+ the ORT Mobile form).

The graph takes what every client has, uint8 RGB pixels `[N, H, W, 3]`, and does the rest inside:
cast, NHWC->NCHW, normalisation, the network, temperature scaling and softmax. The resize stays outside
(each platform has its own image API); its rule is data, in the metadata (see DESIGN.md).

`skinscan export` adds a third output, `cam`: the Grad-CAM map of the predicted class, computed forward-only
inside the graph (see `PackagedModel` and docs/EXPLAIN.md), so phones get explanations without gradients.
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
from skinscan.factory.gate import SCORES, LesionDistance, gate_dims, gate_statistics, image_quality
from skinscan.factory.model import SkinLesionNet
from skinscan.factory.onnx_metadata import set_metadata
from skinscan.factory.ort_mobile import convert_to_ort
from skinscan.labels import HAM10000, LabelSet
from skinscan.runtime.assess import ASSESS
from skinscan.runtime.classifier import CAM, CLASSIFICATION_OUTPUTS, INPUT_NAME
from skinscan.runtime.preprocess import PreprocessConfig

OUTPUT_DESCRIPTIONS = {
    "probabilities": "softmax(logits), calibrated by temperature scaling on val",
    "logits": "network logits divided by the temperature",
    CAM: "Grad-CAM map of the predicted (argmax) class on the last feature map, float [N, h, w] "
                "(h, w = input size / 32, rounded up); ReLU, then scaled to [0, 1] per image (min-max, as "
                "pytorch-grad-cam; an all-zero map stays zero). Upsample it to the input size to overlay it",
    ASSESS: f"float [N, {len(SCORES)}]: the scores {', '.join(SCORES)} that skinscan.runtime.assess judges "
            "('cannot assess'; see skinscan/factory/gate.py)",
}
OPSET = 17
TRAINING_DATA = ("HAM10000 (Tschandl et al. 2018, doi:10.1038/sdata.2018.161), the developers' 8,512-image part, "
                 "lesion-grouped train split; licence CC BY-NC-SA 4.0")


def hardswish_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx of hardswish(x) = x * relu6(x + 3) / 6: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above (as torch's backward)."""
    return torch.where(x < -3, 0.0, torch.where(x <= 3, x / 3 + 0.5, 1.0))


class PackagedModel(nn.Module):
    """The network as clients see it: uint8 NHWC pixels in, calibrated probabilities and logits out, and with
    `cam=True` also the Grad-CAM map of the predicted class, computed without autograd.

    Why Grad-CAM needs no gradients here: the head is global-average-pool -> MLP (MobileNetV3: Linear,
    Hardswish, Dropout, Linear). With A the last feature map [C, h, w], p = mean(A), z = W1 p + b1 and
    logit_c = W2[c] . hardswish(z) + b2[c], the chain rule gives the same gradient at every position:
        d logit_c / d A[k, i, j] = (W1^T (hardswish'(z) * W2[c]))_k / (h w)  =  alpha_k,
    which is Grad-CAM's channel weight (its spatial mean of the gradient). The map is relu(sum_k alpha_k A_k),
    scaled to [0, 1] per image. Positive constant factors (1 / (h w), the temperature) vanish in that
    scaling, so the graph skips them. `head_backward` walks any head of Linear / Hardswish / Dropout layers.

    With a fitted `gate` (skinscan.factory.gate.LesionDistance) it also outputs `assess`, the scores behind "cannot
    assess": the lesion distance of early feature statistics and the image-quality measures.
    """

    def __init__(self, model: SkinLesionNet, temperature: float = 1.0, cam: bool = False,
                 gate: LesionDistance | None = None):
        super().__init__()
        self.model = model.eval()
        self.cam = cam
        self.gate = gate
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / temperature))

    @property
    def output_names(self) -> list[str]:
        return [*CLASSIFICATION_OUTPUTS, *([CAM] if self.cam else []), *([ASSESS] if self.gate is not None else [])]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = image.permute(0, 3, 1, 2).float()
        if not self.cam and self.gate is None:
            logits = self.model(pixels) * self.inverse_temperature
            return torch.softmax(logits, dim=1), logits
        # SkinLesionNet.forward and torchvision's MobileNet forward, spelled out to keep the intermediates.
        net = self.model.net
        normalised = self.model.normalize(pixels)
        if self.gate is None:
            features, statistics = net.features(normalised), {}
        else:
            features, statistics = gate_statistics(net, normalised)
        hidden = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        head_inputs = []
        for layer in net.classifier:
            head_inputs.append(hidden)
            # torchvision's activations work in place: keep the input that the derivative needs intact.
            hidden = layer(hidden.clone() if getattr(layer, "inplace", False) else hidden)
        logits = hidden * self.inverse_temperature
        outputs = [torch.softmax(logits, dim=1), logits]
        if self.cam:
            outputs.append(self._cam(net, head_inputs, features, logits))
        if self.gate is not None:
            outputs.append(torch.cat([self.gate(statistics)[:, None], image_quality(pixels)], dim=1))
        return tuple(outputs)

    @staticmethod
    def _cam(net, head_inputs, features, logits) -> torch.Tensor:
        """Grad-CAM of the argmax class (see the class docstring): [N, h, w] in [0, 1]."""
        alpha = head_backward(net.classifier, head_inputs, logits.argmax(dim=1))
        # sum_k alpha_k A_k as one [1, C] x [C, h*w] product per image: in ONNX Runtime a MatMul is much cheaper
        # than Mul + ReduceSum over channels or an Einsum. (C, h, w are fixed by the input size: constants.)
        channels, height, width = (int(n) for n in features.shape[1:])
        flat = features.reshape(-1, channels, height * width)
        cam = torch.relu((alpha[:, None, :] @ flat).reshape(-1, height, width))
        cam = cam - cam.amin(dim=(1, 2), keepdim=True)
        return cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # an all-zero map stays zero


def head_backward(head: nn.Sequential, inputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """d logit[target] / d (the head's input), in closed form: target [N] class indices -> [N, input features].

    `inputs` are the inputs each layer saw in the forward pass (Hardswish needs them for its derivative).
    """
    gradient = None
    for layer, x in reversed(list(zip(head, inputs, strict=True))):
        if isinstance(layer, nn.Dropout):
            continue  # the identity at inference
        if isinstance(layer, nn.Linear):
            # The last Linear: d logit_c / d x = row c of its weight. Earlier ones: g -> g W.
            gradient = layer.weight[target] if gradient is None else gradient @ layer.weight
        elif isinstance(layer, nn.Hardswish) and gradient is not None:
            gradient = gradient * hardswish_derivative(x)
        else:
            raise ValueError(f"no closed-form Grad-CAM through a {type(layer).__name__} in the head; export "
                             "without the cam output")
    return gradient


def package_metadata(preprocess: PreprocessConfig, model_info: dict, temperature: float,
                     thresholds: dict | None = None, extra: dict | None = None,
                     labels: LabelSet = HAM10000) -> dict[str, str]:
    """The `metadata_props` of the contract: every value a JSON string a client can parse.

    `labels`: the model's label set (the checkpoint's), which clients read instead of assuming HAM10000's.
    """
    values = {
        "skinscan.labels": list(labels.codes),
        "skinscan.label_names": labels.names,
        "skinscan.malignant": list(labels.malignant_codes),
        "skinscan.preprocess": preprocess.to_json(),
        "skinscan.input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                           "normalisation": "inside the graph"},
        "skinscan.outputs": dict(OUTPUT_DESCRIPTIONS),  # export_onnx keeps the outputs its graph has
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


def export_onnx(model: SkinLesionNet, preprocess: PreprocessConfig, path: str | Path, temperature: float = 1.0,
                metadata: dict[str, str] | None = None, cam: bool = False, gate: LesionDistance | None = None) -> Path:
    """Write the fp32 ONNX graph (dynamic batch), check it, and attach the metadata.

    cam: add the `cam` output (Grad-CAM of the predicted class); gate: add the `assess` output (a fitted
    LesionDistance, see `fit_gate`). `skinscan export` turns both on; without them the graph is the bare
    classifier, which the quantization experiments and tests measure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = PackagedModel(model.cpu().float(), temperature, cam=cam, gate=gate).eval()
    example = torch.zeros(1, *preprocess.size, 3, dtype=torch.uint8)
    output_names = wrapped.output_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=output_names,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}})
    graph = onnx.load(str(path))
    graph.doc_string = "skinscan skin-lesion classifier: a screening aid, not a diagnosis."
    metadata = dict(metadata or {})
    if "skinscan.outputs" in metadata:  # describe the outputs this graph has, no more
        described = json.loads(metadata["skinscan.outputs"])
        metadata["skinscan.outputs"] = json.dumps({k: v for k, v in described.items() if k in output_names})
    set_metadata(graph, metadata)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path


def torch_probabilities(model: SkinLesionNet, images_uint8_nhwc: np.ndarray, temperature: float) -> np.ndarray:
    wrapped = PackagedModel(model, temperature).eval()
    return packaged_outputs(wrapped, torch.from_numpy(images_uint8_nhwc))["probabilities"]


def malignant_threshold(probabilities: np.ndarray, labels: np.ndarray, min_sensitivity: float = 0.90,
                        label_set: LabelSet = HAM10000) -> dict:
    """The highest threshold on P(malignant) that still flags `min_sensitivity` of malignant val images.

    Screening favours sensitivity: a missed melanoma costs far more than an unnecessary check-up.
    """
    malignant = np.array([d.malignant for d in label_set.diagnoses])
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
        "malignant_rule": f"flag when {'+'.join(f'P({code})' for code in label_set.malignant_codes)} >= threshold; "
                          f"chosen on val for >= {min_sensitivity:.0%} sensitivity",
        "malignant_val_sensitivity": float(flagged[is_malignant].mean()),
        "malignant_val_specificity": float((~flagged[~is_malignant]).mean()),
    }


def fit_gate(model: SkinLesionNet, images: torch.Tensor, batch_size: int = 128) -> LesionDistance:
    """Fit the `lesion_distance` Gaussians on uint8 [N, H, W, 3] images (the train split)."""
    net = model.net.eval()
    gate = LesionDistance(gate_dims(net))
    collected: dict[int, list[np.ndarray]] = {layer: [] for layer in gate.layers}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = images[start:start + batch_size].permute(0, 3, 1, 2).float()
            _, statistics = gate_statistics(net, model.normalize(pixels), last_block=max(gate.layers))
            for layer, values in statistics.items():
                collected[layer].append(values.numpy())
    gate.fit({layer: np.concatenate(parts) for layer, parts in collected.items()})
    return gate


def packaged_outputs(wrapped: PackagedModel, images: torch.Tensor, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Run the packaged model in PyTorch on uint8 [N, H, W, 3] images: output name -> array."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in wrapped.output_names}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            for name, value in zip(wrapped.output_names, wrapped(images[start:start + batch_size]), strict=True):
                parts[name].append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def build_package(checkpoint_path: str | Path, data_dir: str | Path, split_csv: str | Path, out_dir: str | Path,
                  threads: int = 0, regate: bool = False, extra_dir: str | Path | None = None) -> dict:
    """checkpoint -> a model package folder: calibrated `skinscan.onnx`, its `.ort` form, `manifest.json`.

    Chosen on the val split (never on test): the temperature, the malignancy threshold and the "cannot assess"
    gate's thresholds. The gate is the bundled package's design (a Gaussian of the train split's early feature
    statistics, `fit_gate`); with `regate` it is then re-fitted as `skinscan regate` fits it
    (`skinscan.factory.regate`: the train split, plus the extra folder's images outside its external collection
    when `extra_dir` is given, each also as another device's view, and a dermoscopy score). The re-fitted designs
    have not met their rule yet (docs/RESULTS.md), so they are opt-in. Returns the metadata written into the graph.
    """
    from skinscan.factory.calibration import fit_temperature
    from skinscan.factory.data import as_source
    from skinscan.factory.model import model_from_checkpoint
    from skinscan.factory.onnx_metadata import read_metadata
    from skinscan.factory.regate import FitData, regate_package
    from skinscan.factory.train import TrainConfig, checkpoint_labels, load_checkpoint, load_split_data, softmax
    from skinscan.runtime.assess import choose_thresholds
    from skinscan.runtime.manifest import write_manifest

    out_dir = Path(out_dir)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint).cpu().float().eval()
    preprocess = PreprocessConfig.from_json(checkpoint["preprocess"])
    labels = checkpoint_labels(checkpoint)
    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig(data_dir=str(as_source(data_dir).image_dir), split_csv=str(split_csv), out_dir="",
                         threads=threads, input_size=preprocess.size, resize=preprocess.resize,
                         label_set=labels.to_json())
    data = load_split_data(config, parts=("train", "val"))
    gate = fit_gate(model, data["train"].images)
    # One pass over val gives both the raw logits (temperature 1) and the gate's scores (which ignore it).
    val = packaged_outputs(PackagedModel(model, 1.0, gate=gate).eval(), data["val"].images)
    val_logits, val_labels = val["logits"], data["val"].labels.numpy()
    temperature = fit_temperature(val_logits, val_labels)
    thresholds = malignant_threshold(softmax(val_logits / temperature), val_labels, label_set=labels)
    assess_spec = choose_thresholds(val[ASSESS])
    model_info = {**checkpoint["model_config"], "epoch": checkpoint["epoch_metrics"]["epoch"],
                  "val_balanced_accuracy": checkpoint["epoch_metrics"]["val_balanced_accuracy"]}
    training_data = TRAINING_DATA if labels == HAM10000 else (
        f"the train part of the split {Path(split_csv).name}; labels {', '.join(labels.codes)}")
    metadata = package_metadata(preprocess, model_info, temperature, thresholds,
                                extra={"skinscan.training_data": training_data, "skinscan.assess": assess_spec},
                                labels=labels)
    onnx_path = export_onnx(model, preprocess, out_dir / "skinscan.onnx", temperature, metadata, cam=True, gate=gate)
    convert_to_ort(onnx_path)
    write_manifest(out_dir)
    if regate:
        extra = None if extra_dir is None else Path(extra_dir)
        regate_package(out_dir, FitData(Path(config.data_dir), Path(split_csv), extra, threads=max(1, threads)))
    return read_metadata(onnx.load(str(onnx_path)))
