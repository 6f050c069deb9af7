"""The training recipe: frozen-backbone warm-up, then full fine-tuning with EMA, selected on balanced accuracy.

Read top to bottom like torchvision's reference script: `train` sets up, `train_one_epoch` and
`predict_logits` are plain functions, every knob is a `TrainConfig` field with a default that works.

Why this recipe (the bar: a plain fine-tune peaks at ~0.72 validation balanced accuracy then drifts):
- class imbalance (nv is 62x df): square-root-balanced sampling (rare classes seen ~8x more often, not
  60x, which over-fits the 64 df training images) plus a logit-adjusted loss (Menon et al. 2021) that
  removes the remaining prior, so the argmax of the logits targets *balanced* accuracy;
- an exponential moving average of the weights smooths the noisy late epochs that made the plain recipe
  drift, and it is the EMA model that is evaluated, selected and exported;
- augmentation suited to dermoscopy (any rotation, flips, zoom, colour) in one batched affine op;
- optional distillation (`--teacher CKPT`, repeatable): the loss also pulls the student towards the averaged,
  flip-averaged logits of trained models (Hinton et al. 2015), so one small network learns what an ensemble
  knows without the ensemble's inference cost. The teachers' logits are computed once per run and cached.

The diagnoses are data (`TrainConfig.label_set`, HAM10000's seven by default, any `--labels FILE`); the
checkpoint carries them, so evaluation and export use the labels the model was trained with.

On a GPU (see the README's "Training at scale"): bf16 autocast (fp16 with loss scaling where bf16 is
missing), batches copied through pinned memory without blocking the host, the host synchronising with the
GPU only every `SYNC_EVERY` steps, and opt-in `torch.compile` (`--compile`, `compile_for_training`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from skinscan.factory import distributed
from skinscan.factory.augment import AugmentConfig, augment_batch, to_device, to_model_input
from skinscan.factory.data import (
    DatasetError,
    load_split_images,
    read_metadata,
    read_split,
    split_image_paths,
)
from skinscan.factory.model import create_model, model_from_checkpoint
from skinscan.labels import HAM10000, LabelSet
from skinscan.runtime.preprocess import PreprocessConfig

log = logging.getLogger("skinscan.factory.train")
SYNC_EVERY = 25  # steps between the host reading the loss back from the device (each read waits for the GPU)


@dataclass
class TrainConfig:
    data_dir: str
    split_csv: str
    out_dir: str
    arch: str = "mobilenet_v3_small"
    pretrained: str | None = "imagenet"
    input_size: tuple[int, int] = (252, 336)   # (H, W): the 4:3 shape of dermoscopy images, upscaled 1.68x
    #                                            (AUC +0.025 over 210x280 on val, paired; docs/RESULTS.md run C)
    resize: str = "center_crop"
    warmup_epochs: int = 1                     # head only, backbone frozen
    epochs: int = 12                           # full fine-tuning epochs after the warm-up
    batch_size: int = 64
    lr: float = 1e-3                           # head; the backbone gets lr * backbone_lr_scale
    backbone_lr_scale: float = 0.5
    weight_decay: float = 0.05
    warmup_steps: int = 100                    # linear LR warm-up at the start of fine-tuning
    label_smoothing: float = 0.1
    sampling_power: float = 0.5                # sample class c with prob ~ n_c^(1 - power); 0 = natural
    logit_adjustment: float = 1.0              # tau of the logit-adjusted loss; 0 = plain cross-entropy
    ema_decay: float = 0.995                   # a cap: the ramp (1+n)/(10+n) reaches it after 1,790 steps
    dropout: float = 0.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    threads: int = 0                           # 0 = all cores
    device: str = "auto"
    max_images: int = 0                        # >0: use a per-split subset (tests, smoke runs)
    label_set: list[dict] = field(default_factory=HAM10000.to_json)  # the diagnoses in output order (LabelSet)
    compile: str | None = None                 # torch.compile backend for training steps, e.g. "inductor"; None: eager
    teachers: list[str] = field(default_factory=list)  # checkpoints to distil from (same labels and input size)
    distill_weight: float = 0.7                # share of the distillation term in the loss when teachers are given
    distill_temperature: float = 2.0           # softens both distributions in the distillation term
    mixup_alpha: float = 0.0                   # >0: mixup (Zhang et al. 2018) with lambda ~ Beta(alpha, alpha); 0 = off
    color_constancy: str = "none"              # "shades_of_gray": divide out each image's illuminant (model.py)
    lesion_balanced: bool = False              # within a class, sample lesions equally, not images (sampling_weights)
    histo_weight: float = 1.0                  # within a class, histopathology-confirmed images' sampling weight
    #                                            relative to the others (sampling_weights); 1 = no preference
    select: str = "balanced_accuracy"          # which epoch best.pt keeps: see selection_score
    source_balanced: bool = False              # within a class, give each source (split column `source`) an equal
    #                                            share of the samples (sampling_weights)
    epoch_images: int = 0                      # >0: images sampled per epoch (a fixed step budget across train sets
    #                                            of different sizes); 0 = the size of the train part

    @property
    def labels(self) -> LabelSet:
        return LabelSet.from_json(self.label_set, "the run's label set")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in data.get("augment", {}).items()})
        values["input_size"] = tuple(values.get("input_size", (210, 280)))
        return cls(**values)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class SplitData:
    images: torch.Tensor   # uint8 (N, H, W, 3)
    labels: torch.Tensor   # int64 (N,)
    image_ids: list[str]
    teacher_logits: torch.Tensor | None = None  # float (N, classes): the distillation targets, when distilling
    lesion_ids: list[str] | None = None         # the split's group of each image
    histopathology: torch.Tensor | None = None  # bool (N,): the label was confirmed by histopathology (dx_type
    #                                             "histo"); read only when --histo-weight asks for it
    sources: list[str] | None = None            # each image's source (split column `source`); for --source-balance
    low_resolution: torch.Tensor | None = None  # bool (N,): the stored image is already at or below the degrade
    #                                             size; read only when --degrade-prob asks for it


def load_split_data(config: TrainConfig, parts=("train", "val")) -> dict[str, SplitData]:
    preprocess_config = PreprocessConfig(tuple(config.input_size), config.resize)
    split = read_split(config.split_csv)
    lesion_of = dict(zip(split.image_id, split.lesion_id, strict=True))
    if config.source_balanced:
        require_source_column(split, config.split_csv)
    result = {}
    for part in parts:
        images, labels, image_ids = load_split_images(config.data_dir, config.split_csv, part, preprocess_config,
                                                      max_images=config.max_images, seed=config.seed,
                                                      threads=_threads(config), labels=config.labels)
        result[part] = SplitData(torch.from_numpy(images), torch.from_numpy(labels), image_ids,
                                 lesion_ids=[lesion_of[i] for i in image_ids])
    if "train" in result and config.source_balanced:
        source_of = dict(zip(split.image_id, split.source, strict=True))
        result["train"].sources = [source_of[i] for i in result["train"].image_ids]
    if "train" in result and config.augment.degrade_prob > 0:
        rows = split.set_index("image_id").loc[result["train"].image_ids].reset_index()
        sides = native_short_sides(split_image_paths(config.data_dir, config.split_csv, rows))
        result["train"].low_resolution = torch.from_numpy(sides <= config.augment.degrade_size)
        log.info("--degrade-prob: %d of %d train images are already at most %d px and are not degraded",
                 int(result["train"].low_resolution.sum()), len(sides), config.augment.degrade_size)
    if config.histo_weight != 1.0 and "train" in result:
        sources_split = config.split_csv if "source" in split.columns else None  # multi-source: each source's CSV
        result["train"].histopathology = histopathology_mask(config.data_dir, result["train"].image_ids, sources_split)
    return result


def histopathology_mask(data_dir: str, image_ids: list[str], split_csv: str | None = None) -> torch.Tensor:
    """Which images' labels were confirmed by histopathology, from the metadata's `dx_type` column (HAM10000).

    `split_csv`: a multi-source split, whose sources' CSVs are read instead (images of a source without dx_type
    count as not confirmed)."""
    try:
        if split_csv is not None:
            from skinscan.factory.sources import split_metadata

            metadata = split_metadata(split_csv)
        else:
            metadata = read_metadata(data_dir)
    except DatasetError as error:
        raise DatasetError(f"--histo-weight reads dx_type from the HAM10000 metadata next to the images: {error}") \
            from None
    if "dx_type" not in metadata.columns:
        raise DatasetError(f"--histo-weight needs a dx_type column (HAM10000's: histo, follow_up, consensus, "
                           f"confocal) in the metadata of {data_dir}; it has {', '.join(metadata.columns)}. "
                           "Leave --histo-weight at 1 for data sets without it")
    dx_type = dict(zip(metadata.image_id, metadata.dx_type, strict=True))
    return torch.tensor([dx_type.get(i) == "histo" for i in image_ids])


def require_source_column(split, split_csv) -> None:
    """--source-balance needs each image's source: the split CSV's `source` column."""
    if "source" not in split.columns or split.source.isna().any():
        raise DatasetError(f"--source-balance needs a 'source' column (each image's data source) in {split_csv}, "
                           + ("and some of its rows have none" if "source" in split.columns else
                              f"which has only {', '.join(split.columns)}")
                           + "; write a multi-source split (`skinscan data split --source NAME=FOLDER --source "
                           "...`) or drop --source-balance")


def native_short_sides(paths: list[Path]) -> np.ndarray:
    """Each image file's shorter side in pixels, read from the file header (no decoding: ~1 ms an image)."""
    from PIL import Image

    sides = []
    for path in paths:
        with Image.open(path) as image:
            sides.append(min(image.size))
    return np.array(sides, dtype=np.int64)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=num_classes).float()


def sampling_weights(labels: torch.Tensor, power: float, num_classes: int, lesion_ids: list[str] | None = None,
                     histopathology: torch.Tensor | None = None, histo_weight: float = 1.0,
                     sources: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image sampling weights ~ n_c^-power, and the class prior those weights produce.

    With `lesion_ids`, each class keeps its share but spreads it equally over its lesions rather than its
    images: in our HAM10000 train split 529 of the 659 melanoma images belong to lesions photographed several
    times, so per-image sampling shows such a lesion several times as often as a single-image one, which
    invites memorising lesions rather than learning the diagnosis.

    With `histopathology` (a bool per image) and `histo_weight` != 1, each class also keeps its share but gives
    its histopathology-confirmed images `histo_weight` times the weight of the others. Why: in HAM10000 the
    nevi confirmed by follow-up (55% of the train nevi) are easy, while excised, histopathology-confirmed nevi
    are the ones the model calls melanoma (142 of 320 on our test split, docs/RESULTS.md); sampling the hard
    nevi more often shows the model more of the nevus-melanoma boundary without changing the class balance.

    With `sources` (each image's data source), each class also keeps its share but splits it equally between
    the sources that have images of it (within a source, images or lesions keep their relative weights). Why:
    pooled sources differ in class mix (BCN20000 is 23% melanoma, HAM10000 11%), so with image-proportional
    sampling "looks like BCN" predicts melanoma; balancing class x source makes the source carry no information
    about the class that sampling could teach.
    """
    counts = class_counts(labels, num_classes).clamp(min=1)
    class_weight = counts.pow(-power)
    sampled_prior = counts * class_weight
    weights = class_weight[labels]
    if lesion_ids is not None:
        images_of = Counter(lesion_ids)
        repeats = torch.tensor([float(images_of[lesion]) for lesion in lesion_ids])  # images of each one's lesion
        lesions_per_class = torch.zeros(num_classes).index_add_(0, labels, 1.0 / repeats)
        share = counts / lesions_per_class.clamp(min=1e-12)  # images per lesion, on average, in each class
        weights = weights * share[labels] / repeats
    if histopathology is not None and histo_weight != 1.0:
        before = torch.zeros(num_classes).index_add_(0, labels, weights)
        weights = torch.where(histopathology, weights * histo_weight, weights)
        after = torch.zeros(num_classes).index_add_(0, labels, weights)
        weights = weights * (before / after.clamp(min=1e-12))[labels]
    if sources is not None:
        weights = _balance_sources(weights, labels, sources, num_classes)
    return weights, sampled_prior / sampled_prior.sum()


def _balance_sources(weights: torch.Tensor, labels: torch.Tensor, sources: list[str], num_classes: int) -> torch.Tensor:
    """Rescale `weights` so every (class, source) cell holds an equal part of its class's total weight."""
    if len(sources) != len(labels):
        raise ValueError(f"{len(sources)} sources for {len(labels)} images")
    names = sorted(set(sources))
    source_index = torch.tensor([names.index(name) for name in sources])
    cell = labels * len(names) + source_index
    cell_total = torch.zeros(num_classes * len(names)).index_add_(0, cell, weights)
    class_total = cell_total.view(num_classes, len(names)).sum(1)
    cells_per_class = (cell_total.view(num_classes, len(names)) > 0).sum(1).clamp(min=1)
    target = (class_total / cells_per_class).repeat_interleave(len(names))
    return weights * (target / cell_total.clamp(min=1e-12))[cell]


# ---------------------------------------------------------------------------------------------- model
def _threads(config: TrainConfig, context: distributed.Context | None = None) -> int:
    """--threads, or this process's share of the cores (torchrun may start several per machine)."""
    processes = context.local_world_size if context is not None else 1
    return config.threads or max(1, (os.cpu_count() or 1) // processes)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, else fp16; None (full precision) on the CPU, where bf16 is slower."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    """Mixed precision at `autocast_dtype(device)`; a no-op on the CPU."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast (small fp16 gradients underflow to zero without it); disabled otherwise:
    bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16)


def compile_for_training(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`torch.compile` the network in place (`nn.Module.compile`), for the training steps.

    When it helps: long GPU runs. MobileNets are many small, memory-bound kernels (depthwise convolutions,
    hardswish, squeeze-excite, BatchNorm), and compiling fuses the element-wise ones; see
    `benchmarks/gpu_train_throughput.py` for the measured gain on a given GPU. Why it is off by default:
    compiling takes minutes (the first step of a MobileNetV3-Small took 197 s on our 2-core CPU), and it
    recompiles once when the backbone unfreezes (the set of parameters that need gradients changes), which
    dominates short and CPU runs.

    Compiling in place keeps `model` the ordinary module: its state_dict keys have no `_orig_mod.` prefix,
    so checkpoints load in the eager exporter; the EMA copy (made before), the optimizer and the DDP
    wrapping that is redone at the unfreeze all see the same parameters. Validation runs the EMA model
    eagerly. Under DDP the compiled network is one graph, so gradients are all-reduced after its backward
    rather than overlapped with it: no loss for a 2.5M-parameter MobileNet.
    """
    model.compile(backend=backend)
    return model


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm layers; the backbone at a lower learning rate."""
    groups = []
    for params, lr in ((model.backbone_parameters(), config.lr * config.backbone_lr_scale),
                       (model.head_parameters(), config.lr)):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [{"params": decay, "lr": lr, "weight_decay": config.weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


class ExponentialMovingAverage(AveragedModel):
    """EMA of the weights and BatchNorm statistics with the usual ramp: early on the average follows the model
    closely (decay ~ (1+n)/(10+n), capped at `decay`); integer buffers (BatchNorm's batch counter) are copied.

    Why not AveragedModel with an `avg_fn`: that hands the step count to the function as a device tensor, and
    reading it (once per tensor, every step) makes the host wait for the GPU. Here the count stays on the host
    (AveragedModel keeps `n_averaged` there when given no device) and one fused `_foreach_lerp_` (as timm's
    ModelEmaV3) updates every tensor. The state_dict is AveragedModel's (`module.*`, `n_averaged`).
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay

    def decay_at(self, n: int) -> float:
        """The decay of the n-th update (n >= 1): the ramp (1+n)/(10+n), capped at `decay`."""
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def steps_to_full_decay(self) -> int:
        """Updates before the ramp reaches `decay`: (1+n)/(10+n) >= d from n = (10d - 1)/(1 - d) on.

        1,790 for 0.995, 4,490 for 0.998. A shorter run never averages at the configured decay (the default
        13-epoch HAM10000 run takes ~1,200 steps and ends at 0.9926), so `--ema-decay` then changes nothing:
        a GPU sweep found 30-epoch runs at 0.995 and 0.998 identical up to step ~1,790 (docs/RESULTS.md, run F).
        """
        return math.ceil((10.0 * self.decay - 1.0) / (1.0 - self.decay) - 1e-9) if self.decay < 1 else 0

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        n = int(self.n_averaged)
        rate = 1.0 if n == 0 else 1.0 - self.decay_at(n)
        pairs = list(zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                         itertools.chain(model.parameters(), model.buffers()), strict=True))
        floats = [(averaged, current) for averaged, current in pairs if averaged.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [c.detach() for _, c in floats], rate)
        for averaged, current in pairs:
            if not averaged.is_floating_point():
                averaged.copy_(current)
        self.n_averaged += 1


def learning_rate_schedule(optimizer, frozen_steps: int, warmup_steps: int, total_steps: int):
    """Constant LR while the backbone is frozen, then linear warm-up and cosine decay to zero."""
    def factor(step: int) -> float:
        if step < frozen_steps:
            return 1.0
        step -= frozen_steps
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - frozen_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_backbone_trainable(model, trainable: bool) -> None:
    for p in model.backbone_parameters():
        p.requires_grad_(trainable)


# ------------------------------------------------------------------------------------- train / predict
def train_one_epoch(model, ema, data: SplitData, optimizer, scheduler, config: TrainConfig,
                    epoch: int, log_prior: torch.Tensor, device: torch.device,
                    prepare: Callable[[nn.Module], None] | None = None, label: str | None = None,
                    context: distributed.Context = distributed.SINGLE_PROCESS,
                    scaler: torch.amp.GradScaler | None = None) -> dict:
    """One pass of `len(train)` (or `--epoch-images`) square-root-balanced samples; returns mean loss and accuracy.

    `ema` may be None (no weight averaging); `prepare(model)` runs after `model.train()` (e.g. to freeze
    BatchNorm statistics for quantization-aware fine-tuning); `label` names the progress bar. Under
    torchrun (`context`), `model` is the DDP-wrapped network and this process trains on every
    world_size-th sample of each global batch (`skinscan.factory.distributed`). `scaler` scales the loss for fp16
    autocast (`grad_scaler`). The running loss stays on the device and is read back every `SYNC_EVERY`
    steps, so a GPU is not made to wait for the host at every step.
    """
    model.train()
    if prepare is not None:
        prepare(model)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    weights, _ = sampling_weights(data.labels, config.sampling_power, len(log_prior),
                                  data.lesion_ids if config.lesion_balanced else None,
                                  data.histopathology, config.histo_weight,
                                  data.sources if config.source_balanced else None)
    # Every random draw of the epoch (sampling, augmentation, dropout) is seeded from (seed, epoch), so a
    # resumed run replays exactly the epochs an uninterrupted run would have.
    # The order is the same in every process; augmentation and dropout draws differ per process.
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    torch.manual_seed(config.seed * 1000 + epoch + 7919 * context.rank)
    order = torch.multinomial(weights, config.epoch_images or len(weights), replacement=True, generator=generator)
    augment_generator = generator if context.is_main else torch.Generator().manual_seed(
        config.seed * 1000 + epoch + 7919 * context.rank)
    n_batches = len(order) // config.batch_size
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss and correct predictions
    total_loss, correct, seen = 0.0, 0.0, 0
    bar = tqdm(range(n_batches), desc=label or f"epoch {epoch}", unit="batch", leave=False,
               disable=not context.is_main)
    for b in bar:
        index = distributed.shard(context, order[b * config.batch_size:(b + 1) * config.batch_size])
        low_resolution = data.low_resolution[index] if data.low_resolution is not None else None
        images = augment_batch(to_device(data.images[index], device), config.augment, augment_generator,
                               low_resolution)
        labels = to_device(data.labels[index], device)
        mix = mixup(images, config.mixup_alpha, augment_generator) if config.mixup_alpha > 0 else None
        if mix is not None:
            images, lam, partner = mix
        with autocast(device):
            logits = model(images)
        adjusted = logits.float() + config.logit_adjustment * log_prior
        loss = F.cross_entropy(adjusted, labels, label_smoothing=config.label_smoothing)
        if mix is not None:
            loss = lam * loss + (1 - lam) * F.cross_entropy(adjusted, labels[partner],
                                                            label_smoothing=config.label_smoothing)
        if data.teacher_logits is not None:
            targets = to_device(data.teacher_logits[index], device)
            loss = (1 - config.distill_weight) * loss + config.distill_weight * distillation_loss(
                logits.float(), targets, config.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(getattr(model, "module", model))  # the network inside a DDP wrapper
        sums += torch.stack([loss.detach().double() * len(index), (logits.argmax(1) == labels).sum().double()])
        seen += len(index)
        if (b + 1) % SYNC_EVERY == 0 or b + 1 == n_batches:
            total_loss, correct = sums.tolist()
            if not math.isfinite(total_loss):
                raise FloatingPointError(f"the loss became {total_loss} by epoch {epoch}, batch {b}; "
                                         "lower --lr or check the input data")
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    total_loss, correct, seen = distributed.sum_over_processes(context, [total_loss, correct, seen])
    return {"train_loss": total_loss / max(1, seen), "train_accuracy": correct / max(1, seen)}


def mixup(images: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Blend each image with a partner from the same batch: lam * x + (1 - lam) * x[partner], lam ~ Beta(alpha, alpha).

    Why: with square-root-balanced sampling the 64 df training images come round ~8x per epoch, and the model
    learns them by heart; mixed images and mixed targets (the loss is lam * CE(y) + (1 - lam) * CE(y[partner]))
    regularise exactly there. One lam per batch, as in the paper; drawn from the epoch's seeded generator, so a
    resumed run replays the same mixes.
    """
    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator))).beta(alpha, alpha))
    partner = torch.randperm(len(images), generator=generator).to(images.device)
    return lam * images + (1 - lam) * images[partner], lam, partner


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 so its gradient keeps the
    scale of the cross-entropy's as T changes (Hinton et al. 2015). Both sides are the balanced logits (no
    prior added): the teachers were trained with the same logit adjustment, so their logits already aim at
    balanced accuracy."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def teacher_logits(config: TrainConfig, data: SplitData, device: torch.device,
                   context: distributed.Context = distributed.SINGLE_PROCESS) -> torch.Tensor:
    """The mean flip-averaged logits of `config.teachers` on the (unaugmented) training images.

    A teacher must share the run's labels (same codes, same order) and input size and resize rule,
    so its logits line up with the student's outputs and are computed on the same decoded pixels.
    Under torchrun each process computes its shard of the images and all get the whole result back.
    """
    total = None
    for path in config.teachers:
        checkpoint = load_checkpoint(path)
        codes = checkpoint_labels(checkpoint).codes
        if list(codes) != list(config.labels.codes):
            raise ValueError(f"teacher {path} predicts {list(codes)}, this run {list(config.labels.codes)}: "
                             "distil only from models trained on the same label set")
        preprocess = PreprocessConfig.from_json(checkpoint["preprocess"])
        if tuple(preprocess.size) != tuple(config.input_size) or preprocess.resize != config.resize:
            raise ValueError(f"teacher {path} reads {list(preprocess.size)} {preprocess.resize} images, this run "
                             f"{list(config.input_size)} {config.resize}: use the teacher's --input-size/--resize")
        teacher = model_from_checkpoint(checkpoint).to(device, memory_format=torch.channels_last)
        shard_logits = predict_logits(teacher, distributed.shard(context, data.images), device=device, tta=True)
        logits = torch.from_numpy(distributed.gather_shards(context, shard_logits, len(data.images)))
        total = logits if total is None else total + logits
        log.info("teacher %s: balanced accuracy %.3f on the training images", path,
                 balanced_accuracy_score(data.labels.numpy(), logits.argmax(1).numpy()))
    return total / len(config.teachers)


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, batch_size: int = 128, device=None, tta: bool = False) -> np.ndarray:
    """Logits for uint8 (N, H, W, 3) images; `tta` averages the logits of the 4 flips of each image."""
    device = device or next(model.parameters()).device
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(to_device(images[start:start + batch_size], device))
        with autocast(device):
            if tta:
                views = [batch, batch.flip(3), batch.flip(2), batch.flip(2).flip(3)]
                logits = torch.stack([model(v).float() for v in views]).mean(0)
            else:
                logits = model(batch).float()
        outputs.append(logits.cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, model.config.num_classes), np.float32)


def validation_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """The numbers that drive model selection (the full ISIC set is `skinscan evaluate`'s job)."""
    probabilities = softmax(logits)
    present = np.unique(labels)
    try:
        auc = float(roc_auc_score(labels, probabilities[:, present] / probabilities[:, present].sum(1, keepdims=True),
                                  multi_class="ovr", labels=present)) if len(present) > 2 else float("nan")
    except ValueError:
        auc = float("nan")
    return {"val_balanced_accuracy": float(balanced_accuracy_score(labels, logits.argmax(1))),
            "val_macro_auc": auc, "val_accuracy": float((logits.argmax(1) == labels).mean())}


SELECTION_RULES = ("balanced_accuracy", "balanced_accuracy_plus_auc")


def require_selection_rule(rule: str) -> None:
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(SELECTION_RULES)}")


def selection_score(row: dict, rule: str) -> float:
    """How an epoch's validation metrics rank it for `best.pt`.

    "balanced_accuracy" (the default, the ISIC 2018 ranking metric) alone tends to keep late epochs whose
    macro AUC has already fallen (docs/RESULTS.md, runs J and K: selected epochs 0.926-0.948 AUC against
    their runs' peaks of 0.942-0.952); "balanced_accuracy_plus_auc" ranks by their sum, so a point of AUC
    weighs as much as a point of balanced accuracy. An undefined AUC (a class missing from a tiny val
    subset) counts as 0, so the rule then falls back to balanced accuracy.
    """
    require_selection_rule(rule)
    score = row["val_balanced_accuracy"]
    if rule == "balanced_accuracy_plus_auc" and math.isfinite(row.get("val_macro_auc", float("nan"))):
        score += row["val_macro_auc"]
    return score


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic: write a temporary file, then rename; an interrupted save never corrupts the last good one."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise RuntimeError(f"{path} is not a readable skinscan checkpoint ({error})") from None


def load_model(path: str | Path):
    """The model (EMA weights) of a training checkpoint, ready for evaluation or export."""
    return model_from_checkpoint(load_checkpoint(path))


def checkpoint_labels(checkpoint: dict) -> LabelSet:
    """The label set a checkpoint's model predicts, in output order.

    Checkpoints from before label sets were data carry only the codes (`labels`): HAM10000's.
    """
    if "label_set" in checkpoint:
        return LabelSet.from_json(checkpoint["label_set"], "the checkpoint's label set")
    if list(checkpoint.get("labels", HAM10000.codes)) != list(HAM10000.codes):
        raise ValueError(f"the checkpoint's labels {checkpoint['labels']} are not HAM10000's and it carries no "
                         "label set (names, malignancy); re-train it with --labels FILE")
    return HAM10000


# ------------------------------------------------------------------------------------------------ main
def _setup_logging(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(out_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run the recipe; returns the path of the best checkpoint (`best.pt` in the run folder).

    The run folder gets `config.json`, `log.txt`, `metrics.jsonl` (one line per epoch), `last.pt`
    (everything needed to resume) and `best.pt` (the EMA model of the best epoch by `config.select`; by default
    the best validation balanced accuracy).
    """
    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if not resume:  # a fresh run would overwrite best.pt and append to metrics.jsonl: never lose a finished run
        earlier = [p.name for p in (best_path, last_path, out_dir / "metrics.jsonl") if p.exists()]
        if earlier:
            raise FileExistsError(f"{out_dir} already holds a training run ({', '.join(earlier)}); continue it "
                                  "with --resume, or give another --out (or remove that folder) to start afresh")
    if config.teachers and config.mixup_alpha > 0:  # checked before minutes of decoding, not after
        raise ValueError("--mixup and --teacher cannot be combined (the teacher targets would need mixing too); "
                         "drop one of them")
    require_selection_rule(config.select)  # an unknown rule fails here, not after an epoch
    if config.source_balanced:  # likewise a split without sources
        require_source_column(read_split(config.split_csv), config.split_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = distributed.context_from_environment()  # torchrun's processes; one process otherwise
    if context.enabled and config.batch_size % context.world_size:
        raise ValueError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                         f"{context.world_size} processes")
    handler = _setup_logging(out_dir) if context.is_main else None
    try:
        return _train(config, out_dir, last_path, best_path, resume, context)
    finally:
        distributed.stop(context)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _train(config: TrainConfig, out_dir: Path, last_path: Path, best_path: Path, resume: bool,
           context: distributed.Context) -> Path:
    checkpoint = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to resume from; drop --resume to start afresh")
        checkpoint = load_checkpoint(last_path)
        config = TrainConfig.from_json(checkpoint["train_config"])
        log.info("resuming from %s after epoch %d", last_path, checkpoint["epoch"])
    if context.is_main:
        (out_dir / "config.json").write_text(json.dumps(config.to_json(), indent=2))

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.set_num_threads(_threads(config, context))
    device = distributed.start(context, select_device(config.device))
    start = time.time()
    data = load_split_data(config)
    log.info("decoded %s images in %.0fs on %s%s", {k: len(v.labels) for k, v in data.items()},
             time.time() - start, device, f" x {context.world_size} processes" if context.enabled else "")

    labels = config.labels
    log.info("%d labels: %s", len(labels), ", ".join(labels.codes))
    if config.teachers:
        data["train"].teacher_logits = cached_teacher_logits(config, data["train"], device, out_dir, context)
    model = create_model(config.arch, config.pretrained if checkpoint is None else None, num_classes=len(labels),
                         dropout=config.dropout, color_constancy=config.color_constancy)
    model = model.to(device, memory_format=torch.channels_last)
    ema = ExponentialMovingAverage(model, config.ema_decay)
    optimizer = build_optimizer(model, config)
    total_epochs = config.warmup_epochs + config.epochs
    steps_per_epoch = (config.epoch_images or len(data["train"].labels)) // config.batch_size
    total_steps = total_epochs * steps_per_epoch
    scheduler = learning_rate_schedule(optimizer, config.warmup_epochs * steps_per_epoch, config.warmup_steps,
                                       total_steps)
    if total_steps < ema.steps_to_full_decay():
        log.info("EMA: %d steps, fewer than the %d its ramp needs to reach --ema-decay %g; the average ends at "
                 "decay %.4f, so --ema-decay has no effect on this run", total_steps, ema.steps_to_full_decay(),
                 config.ema_decay, ema.decay_at(total_steps))
    _, sampled_prior = sampling_weights(data["train"].labels, config.sampling_power, len(labels))
    log_prior = torch.log(sampled_prior).to(device)
    scaler = grad_scaler(device)

    first_epoch, best = 1, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["train_model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):  # empty when saved by a disabled (not fp16) scaler
            scaler.load_state_dict(checkpoint["scaler"])
        first_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
    if config.compile:
        compile_for_training(model, config.compile)  # after the EMA copy and the resumed weights; see its docstring

    trained, wrapped_phase = model, None
    for epoch in range(first_epoch, total_epochs + 1):
        warming_up = epoch <= config.warmup_epochs
        set_backbone_trainable(model, not warming_up)
        if context.enabled and wrapped_phase != warming_up:
            # DDP fixes the set of trainable parameters when it wraps: wrap again when the backbone unfreezes.
            trained, wrapped_phase = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None), warming_up
        epoch_start = time.time()
        stats = train_one_epoch(trained, ema, data["train"], optimizer, scheduler,
                                config, epoch, log_prior, device, context=context, scaler=scaler)
        val_logits = distributed.gather_shards(
            context, predict_logits(ema.module, distributed.shard(context, data["val"].images), device=device),
            len(data["val"].labels))
        row = {"epoch": epoch, "phase": "warmup" if warming_up else "finetune", **stats,
               **validation_metrics(data["val"].labels.numpy(), val_logits), "lr": optimizer.param_groups[-1]["lr"],
               "seconds": round(time.time() - epoch_start, 1)}
        improved = best is None or selection_score(row, config.select) > selection_score(best, config.select)
        if improved:
            best = row
        if context.is_main:  # every process holds the same weights and metrics; one writes them
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if improved:
                save_checkpoint(_export_state(ema.module, config, row), best_path)
            save_checkpoint({"epoch": epoch, "train_config": config.to_json(), "train_model": model.state_dict(),
                             "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best": best,
                             **_export_state(ema.module, config, row)}, last_path)
        distributed.barrier(context)
        message = (f"epoch {epoch}/{total_epochs} {row['phase']}: loss {row['train_loss']:.3f}  "
                   f"val bal.acc {row['val_balanced_accuracy']:.3f}  val AUC {row['val_macro_auc']:.3f}  "
                   f"({row['seconds']:.0f}s){'  * best' if improved else ''}")
        log.info(message)
        if context.is_main:
            tqdm.write(message)
    log.info("best epoch %s (selected on %s): val balanced accuracy %.3f, macro AUC %.3f -> %s", best["epoch"],
             config.select, best["val_balanced_accuracy"], best["val_macro_auc"], best_path)
    return best_path


def cached_teacher_logits(config: TrainConfig, data: SplitData, device: torch.device, out_dir: Path,
                          context: distributed.Context = distributed.SINGLE_PROCESS) -> torch.Tensor:
    """`teacher_logits`, kept in the run folder so a resumed run does not recompute them (minutes on a CPU).

    The cache is keyed by the teachers' paths, sizes and modification times and the image ids, so a teacher
    retrained in place or another image set recomputes it. Under torchrun the processes use the cache only if
    every one of them can read a matching copy (otherwise all recompute, sharded, so none waits in a collective
    the others skipped), and only rank 0 writes it.
    """
    path = out_dir / "teacher_logits.pt"
    key = {"teachers": [str(t) for t in config.teachers],
           "teacher_files": [[os.stat(t).st_size, os.stat(t).st_mtime_ns] for t in config.teachers],
           "image_ids": data.image_ids}
    cached = torch.load(path, weights_only=True) if path.is_file() else None
    usable = cached is not None and cached["key"] == key
    if distributed.sum_over_processes(context, [float(usable)])[0] == context.world_size:
        return cached["logits"]
    start = time.time()
    logits = teacher_logits(config, data, device, context)
    if context.is_main:
        save_checkpoint({"key": key, "logits": logits}, path)
    log.info("teacher logits for %d images in %.0fs (cached in %s)", len(logits), time.time() - start, path)
    return logits


def _export_state(model, config: TrainConfig, row: dict) -> dict:
    """What export/evaluate need: the model config + weights and the preprocessing rule."""
    return {"model_config": model.config.to_json(), "model": model.state_dict(),
            "preprocess": PreprocessConfig(tuple(config.input_size), config.resize).to_json(),
            "labels": list(config.labels.codes), "label_set": config.label_set, "epoch_metrics": row,
            "train_config": config.to_json()}
