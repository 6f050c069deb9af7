"""A training checkpoint as the PyTorch eager engine that `skinscan benchmark --checkpoint` measures.

It lives in the factory (torch, the model definitions) so that the runtime's benchmark stays torch-free:
the CLI loads the engine here and hands it to `skinscan.runtime.benchmark.run_benchmark`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from skinscan.factory.export import PackagedModel
from skinscan.factory.model import model_from_checkpoint
from skinscan.factory.train import load_checkpoint
from skinscan.runtime.benchmark import EagerEngine


def load_eager_engine(checkpoint_path: str | Path) -> EagerEngine:
    """The checkpoint's model behind the package's input contract (uint8 NHWC in), channels-last, in eval mode."""
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)  # = skinscan.factory.train.load_model, keeping the preprocess config
    model = model_from_checkpoint(checkpoint).to(memory_format=torch.channels_last)
    size = checkpoint.get("preprocess", {}).get("size")
    return EagerEngine(checkpoint_path, PackagedModel(model, 1.0).eval(), torch,
                       (int(size[0]), int(size[1])) if size else None)
