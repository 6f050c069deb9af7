"""Model builders: MobileNetV3-Small/-Large and MobileNetV2 with a 7-class head, plus pretrained weights.

One entry point, `create_model`, like timm's; each model carries its own input normalisation, so that
export can bake it into the ONNX graph and no client has to know it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from skinscan.labels import LABEL_CODES

# torchvision's own ImageNet weights use ImageNet mean/std on the 0-1 scale; we work on 0-255.
IMAGENET_MEAN_STD = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))

ARCHITECTURES = {
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, "MobileNet_V3_Small_Weights"),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, "MobileNet_V3_Large_Weights"),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, "MobileNet_V2_Weights"),
}


COLOR_CONSTANCY = ("none", "shades_of_gray")


def shades_of_gray(pixels: torch.Tensor) -> torch.Tensor:
    """Shades-of-Gray colour constancy (Finlayson & Trezzi 2004) on float RGB in [0, 255], NCHW.

    Dermoscopes differ in light source and white balance; estimating each image's illuminant as the per-channel
    Minkowski p-norm mean (p = 6, as in Barata et al. 2015 and several ISIC challenge entries) and dividing it
    out removes a colour cast the network would otherwise have to learn to ignore. The gains keep the mean
    brightness (a grey illuminant leaves the image unchanged), and the result is rounded and clipped to whole
    pixel values in [0, 255], like the usual uint8 implementation, so the model's input stays an 8-bit image.

    The sixth power is two multiplications on the 0-255 scale (x^6 <= 2.7e14 fits float32), scaled to 0-1 after
    the root: the exported graph's `Pow` over every pixel cost ~1.6 ms per 252x336 image in ONNX Runtime (1
    thread), three times this. Same result up to float rounding (docs/RESULTS.md, run L's package). The mean is
    taken along rows, then over the row means: one float32 sum over all 84,672 pixels in order (as a plain
    kernel, e.g. onnxruntime-web's, may add them) is ~1e-4 off, enough to move some pixels across a rounding
    boundary and make the browser's answer differ from Python's; sums of 336 and 252 terms are ~1e-7 off.
    """
    pixels = pixels.float()
    squared = pixels * pixels
    sixth_power_mean = (squared * squared * squared).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
    illuminant = sixth_power_mean.pow(1.0 / 6.0) / 255.0 + 1e-6
    gains = illuminant.norm(dim=1, keepdim=True) / (illuminant * math.sqrt(3.0))
    return torch.round(pixels * gains).clamp(0.0, 255.0)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std on the 0-255 RGB scale: the network sees (x - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model from a checkpoint, without the original weights file."""

    arch: str = "mobilenet_v3_small"
    num_classes: int = len(LABEL_CODES)
    dropout: float = 0.2
    normalization: Normalization = Normalization(*IMAGENET_MEAN_STD)
    color_constancy: str = "none"   # one of COLOR_CONSTANCY, applied before the normalisation

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        norm = data["normalization"]
        return cls(arch=data["arch"], num_classes=int(data["num_classes"]), dropout=float(data["dropout"]),
                   normalization=Normalization(tuple(norm["mean"]), tuple(norm["std"])),
                   color_constancy=data.get("color_constancy", "none"))


class SkinLesionNet(nn.Module):
    """A torchvision backbone whose forward takes float RGB in [0, 255] (NCHW) and returns logits.

    The normalisation is part of the module (two buffers), which is what export relies on.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if config.color_constancy not in COLOR_CONSTANCY:
            raise ValueError(f"unknown colour constancy {config.color_constancy!r}; "
                             f"choose one of {', '.join(COLOR_CONSTANCY)}")
        self.config = config
        builder, _ = ARCHITECTURES[config.arch]
        self.net = builder(weights=None, num_classes=1000, dropout=config.dropout)
        self.reset_classifier(config.num_classes)
        self.register_buffer("mean", torch.tensor(config.normalization.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.normalization.std).view(1, 3, 1, 1))

    @property
    def features(self) -> nn.Module:
        return self.net.features

    @property
    def classifier(self) -> nn.Sequential:
        return self.net.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear (the ImageNet 1000-way one) with a fresh `num_classes` layer."""
        last = self.net.classifier[-1]
        self.net.classifier[-1] = nn.Linear(last.in_features, num_classes)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.net.features.parameters())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """What the backbone sees: colour constancy (when configured), then (x - mean) / std."""
        if self.config.color_constancy == "shades_of_gray":
            images = shades_of_gray(images)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def resolve_pretrained(arch: str, pretrained: str) -> tuple[dict[str, torch.Tensor], Normalization]:
    """Pretrained ImageNet weights: torchvision's official download (`"imagenet"`) or a local state_dict.

    A local file `X.pth` must have `X.json` beside it stating the normalisation the weights were trained
    with (`mean`, `std` on the 0-255 scale): getting that wrong silently costs accuracy.
    """
    if pretrained == "imagenet":
        _, weights_enum = ARCHITECTURES[arch]
        url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url
        return download_state_dict(url), Normalization(*IMAGENET_MEAN_STD)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained weights at {path}; pass 'imagenet' or a state_dict .pth file")
    config_path = path.with_suffix(".json")
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{path} needs a preprocessing file {config_path.name} beside it, e.g. "
            '{"arch": "mobilenet_v3_small", "mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5]}'
        )
    info = json.loads(config_path.read_text())
    if info.get("arch", arch) != arch:
        raise ValueError(f"{path} holds {info['arch']} weights, not {arch}; pass --arch {info['arch']}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return state_dict, Normalization(tuple(info["mean"]), tuple(info["std"]))


def download_state_dict(url: str, model_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Fetch (once, then from torch's hub cache) a torchvision checkpoint, verifying its sha256 prefix.

    torchvision names its files `NAME-<first 8+ hex digits of sha256>.pth`; `check_hash` refuses a
    corrupted or tampered download instead of loading it.
    """
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=str(model_dir) if model_dir else None,
                                                  map_location="cpu", progress=True, check_hash=True,
                                                  weights_only=True)
    except (OSError, RuntimeError) as error:
        raise RuntimeError(
            f"cannot download ImageNet weights from {url} ({error}); on an offline machine pass a local "
            "state_dict instead: --pretrained PATH.pth (with PATH.json beside it)"
        ) from None


def create_model(
    arch: str = "mobilenet_v3_small",
    pretrained: str | None = None,
    num_classes: int = len(LABEL_CODES),
    dropout: float = 0.2,
    color_constancy: str = "none",
) -> SkinLesionNet:
    """Build a classifier; with `pretrained`, load ImageNet weights into everything but the last layer."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if pretrained is None:
        return SkinLesionNet(ModelConfig(arch, num_classes, dropout, color_constancy=color_constancy))
    state_dict, normalization = resolve_pretrained(arch, pretrained)
    model = SkinLesionNet(ModelConfig(arch, 1000, dropout, normalization, color_constancy))
    model.net.load_state_dict(state_dict, strict=True)
    model.reset_classifier(num_classes)
    model.config = ModelConfig(arch, num_classes, dropout, normalization, color_constancy)
    return model


# What wrappers put in front of the network's own state_dict keys: torch.compile's OptimizedModule, DDP.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrapped_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain network's state_dict: keys saved through a `torch.compile` or DDP wrapper lose its prefix.

    skinscan's own training saves the unwrapped module, so this only matters for checkpoints made elsewhere
    (e.g. `torch.save(torch.compile(model).state_dict())`); our own keys never start with these prefixes.
    """
    def plain(key: str) -> str:
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key
    return {plain(key): value for key, value in state_dict.items()}


def model_from_checkpoint(checkpoint: dict) -> SkinLesionNet:
    """Rebuild the model saved by training (`{"model_config": ..., "model": state_dict, ...}`)."""
    model = SkinLesionNet(ModelConfig.from_json(checkpoint["model_config"]))
    model.load_state_dict(unwrapped_state_dict(checkpoint["model"]))
    return model.eval()
