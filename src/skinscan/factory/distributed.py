"""Multi-process training under `torchrun` (DistributedDataParallel): who this process is, and the few
collective operations the training loop needs.

`skinscan train` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE); without it
(a plain `skinscan train`) everything here is a no-op and the run is the single-process one.

How the recipe maps onto W processes (see `skinscan.factory.train.train_one_epoch`):
- the global batch stays `--batch-size`: every process draws the same seeded, class-balanced order of the
  epoch and takes every W-th sample of each global batch, so each step sees the same images a 1-process
  run sees, and DDP's gradient average over the W equal shards is the global batch's gradient;
- augmentation and dropout draws differ per process (seeded from seed, epoch and rank);
- BatchNorm statistics are per process (batch / W images each; SyncBatchNorm needs GPUs and is not
  worth it at MobileNet batch sizes of 32+ per process);
- validation is sharded too (every W-th image) and the logits are gathered, so every process computes the
  same metrics and takes the same model-selection decision; only rank 0 writes files.
Backends: NCCL when training on CUDA, gloo on CPU (what the tests use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank 0 of 1 for an ordinary single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Context()


def context_from_environment() -> Context:
    """The Context torchrun describes in the environment (no process group is started here)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    return Context(rank=int(os.environ["RANK"]), world_size=world_size,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))))


def start(context: Context, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this process's device."""
    if not context.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop(context: Context) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.enabled:
        dist.barrier()


def sum_over_processes(context: Context, values: list[float]) -> list[float]:
    """Element-wise sum of the same list of numbers over all processes (float64, so counts stay exact)."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def shard(context: Context, items):
    """This process's share: every world_size-th item starting at its rank."""
    return items[context.rank::context.world_size] if context.enabled else items


def gather_shards(context: Context, rows: np.ndarray, total: int) -> np.ndarray:
    """Inverse of `shard` for arrays: every process gets all `total` rows back in the original order."""
    if not context.enabled:
        return rows
    parts: list = [None] * context.world_size
    dist.all_gather_object(parts, rows)
    gathered = np.empty((total, *rows.shape[1:]), dtype=rows.dtype)
    for rank, part in enumerate(parts):
        gathered[rank::context.world_size] = part
    return gathered
