"""Quantization-aware fine-tuning: a short run with INT8 arithmetic simulated, so weights learn to tolerate it.

Post-training quantization costs MobileNetV3 several points of balanced accuracy (rare classes such as
df and akiec flip first). Here the trained model gets a few epochs at a low learning rate with
- every conv/linear weight fake-quantized per output channel, symmetric int8 (what ORT's per-channel
  quantizer does; per-channel scaling commutes with the BatchNorm folded in at export, so quantizing the
  unfolded weight is the same grid), and
- fake uint8 quantization (per tensor, asymmetric, range tracked by an moving average) at the tensors
  ORT quantizes: after each BatchNorm, activation, squeeze-excite block, residual add, pooling and linear,
  with BatchNorm statistics frozen. The weights are then snapped to their int8 grid, so ORT's quantizer
  reproduces them exactly, and the FP32 and INT8 packages are built from the same weights.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
from torchvision.models.mobilenetv3 import InvertedResidual as V3Block
from torchvision.ops.misc import SqueezeExcitation
from tqdm import tqdm

OBSERVED = (nn.BatchNorm2d, nn.Hardswish, nn.ReLU, nn.ReLU6, nn.Hardsigmoid, SqueezeExcitation, V3Block, V2Block,
            nn.AdaptiveAvgPool2d, nn.Linear)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization (straight-through gradient)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.detach().reshape(weight.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)


class ActivationFakeQuant:
    """Per-tensor asymmetric uint8 fake quantization of a module's output, range from a moving average."""

    def __init__(self, momentum: float = 0.01):
        self.momentum, self.low, self.high = momentum, None, None

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if module.training or self.low is None:
            low, high = output.detach().min().clamp(max=0.0), output.detach().max().clamp(min=0.0)
            if self.low is None:
                self.low, self.high = low, high
            else:
                self.low = self.low + self.momentum * (low - self.low)
                self.high = self.high + self.momentum * (high - self.high)
        scale = float((self.high - self.low).clamp(min=1e-8) / 255.0)
        zero_point = int(torch.clamp(torch.round(-self.low / scale), 0, 255))
        return torch.fake_quantize_per_tensor_affine(output, scale, zero_point, 0, 255)


def attach_fake_quantization(model: nn.Module) -> list:
    """Add weight parametrizations and activation hooks in place; returns the hook handles."""
    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant())
        if isinstance(module, OBSERVED):
            handles.append(module.register_forward_hook(ActivationFakeQuant()))
    return handles


def detach_fake_quantization(model: nn.Module, handles: list) -> None:
    """Remove the hooks and snap every weight to its int8 grid (kept as float: an ordinary model again)."""
    for handle in handles:
        handle.remove()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm in eval mode: frozen statistics, as in the folded INT8 graph."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def quantization_aware_finetune(checkpoint_path: str | Path, out_dir: str | Path, data_dir: str | Path | None = None,
                                split_csv: str | Path | None = None, epochs: int = 2, lr: float = 1e-4,
                                threads: int = 0, max_images: int = 0) -> Path:
    """Fine-tune a trained checkpoint with INT8 simulated; writes `OUT/best.pt` (export-ready) and a log.

    Model selection: the epoch whose fake-quantized model has the best validation balanced accuracy
    (the test split stays untouched).
    """
    from skinscan.factory.model import model_from_checkpoint
    from skinscan.factory.train import (
        TrainConfig,
        checkpoint_labels,
        learning_rate_schedule,
        load_checkpoint,
        load_split_data,
        predict_logits,
        sampling_weights,
        save_checkpoint,
        select_device,
        train_one_epoch,
        validation_metrics,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(checkpoint_path)
    values = dict(checkpoint["train_config"], out_dir=str(out_dir), lr=lr, warmup_epochs=0, epochs=epochs,
                  pretrained=None, threads=threads or checkpoint["train_config"].get("threads", 0),
                  max_images=max_images)
    if data_dir is not None:
        values["data_dir"] = str(data_dir)
    if split_csv is not None:
        values["split_csv"] = str(split_csv)
    values["label_set"] = checkpoint_labels(checkpoint).to_json()  # the labels the model predicts
    config = TrainConfig.from_json(values)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = select_device(config.device)
    data = load_split_data(config)
    model = model_from_checkpoint(checkpoint).to(device, memory_format=torch.channels_last)
    handles = attach_fake_quantization(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    steps = epochs * (len(data["train"].labels) // config.batch_size)
    scheduler = learning_rate_schedule(optimizer, 0, 0, steps)
    num_classes = model.config.num_classes
    log_prior = torch.log(sampling_weights(data["train"].labels, config.sampling_power, num_classes)[1]).to(device)

    def evaluate() -> dict:
        return validation_metrics(data["val"].labels.numpy(), predict_logits(model, data["val"].images, device=device))

    history = [{"epoch": 0, **evaluate()}]
    best_state, best = copy.deepcopy(model.state_dict()), history[0]
    for epoch in range(1, epochs + 1):
        # epoch 1000 + e: random draws (sampling, augmentation) that differ from the original training's.
        stats = train_one_epoch(model, None, data["train"], optimizer, scheduler, config, 1000 + epoch, log_prior,
                                device, prepare=freeze_batchnorm, label=f"QAT epoch {epoch}/{epochs}")
        history.append({"epoch": epoch, **stats, **evaluate()})
        tqdm.write(f"QAT epoch {epoch}/{epochs}: val balanced accuracy (INT8 simulated) "
                   f"{history[-1]['val_balanced_accuracy']:.3f}")
        if history[-1]["val_balanced_accuracy"] > best["val_balanced_accuracy"]:
            best_state, best = copy.deepcopy(model.state_dict()), history[-1]
    model.load_state_dict(best_state)
    detach_fake_quantization(model, handles)
    model = model.cpu().eval()
    (out_dir / "qat_history.json").write_text(json.dumps(history, indent=2))
    path = out_dir / "best.pt"
    save_checkpoint({"model_config": model.config.to_json(), "model": model.state_dict(),
                     "preprocess": checkpoint["preprocess"], "labels": checkpoint["labels"],
                     "label_set": checkpoint_labels(checkpoint).to_json(),
                     "epoch_metrics": {**best, "qat_from": str(checkpoint_path),
                                       "epoch": checkpoint["epoch_metrics"]["epoch"]},
                     "train_config": config.to_json()}, path)
    return path
