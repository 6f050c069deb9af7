"""Training and feature-extraction throughput on this CPU: skinscan's batched pipeline vs a per-image baseline.

    python benchmarks/train_throughput.py [--arch mobilenet_v3_small] [--size 168 224] [--batch 64] [--steps 10]
                                          [--json out.json]

skinscan: a uint8 NHWC batch -> `skinscan.factory.augment.augment_batch` (one affine grid_sample and one colour
matmul for the whole batch) -> forward/backward/AdamW on a channels_last model, as `train_one_epoch` does.
baseline: the conventional recipe: each image as a PIL image through torchvision.transforms.v2
(RandomResizedCrop, flips, RandomRotation, ColorJitter, to tensor), stacked into an NCHW contiguous batch,
the same model in the default memory format. Both run in this process on the same images and thread count
(no DataLoader workers: on a 2-core machine they would compete with the model for the same cores).
The two pipelines' steps alternate in rounds and each keeps its best round (`skinscan.runtime.benchmark`), so
background load hits both alike. The model is randomly initialised: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from skinscan.factory.augment import AugmentConfig, augment_batch, to_model_input
from skinscan.factory.data import default_data_dir
from skinscan.factory.model import create_model
from skinscan.runtime.benchmark import cpu_name, interleaved_latency, write_json
from skinscan.runtime.preprocess import PreprocessConfig, preprocess

MEASURES = {
    "train_step": "train step (augment + forward/backward + AdamW)",
    "feature_extraction": "feature extraction (eval forward, no grad)",
    "augmentation": "augmentation alone",
}


def load_images(size: tuple[int, int], count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """The first `count` HAM10000 images decoded to `size` (H, W) when the data set is here, else random pixels."""
    folder = default_data_dir() / "images"
    paths = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if paths:
        config = PreprocessConfig(size, "center_crop")
        images = np.stack([preprocess(path, config) for path in paths])
        return images, f"real HAM10000 images ({len(paths)} from {folder})"
    images = np.random.default_rng(seed).integers(0, 256, size=(count, *size, 3), dtype=np.uint8)
    return images, f"random images ({count}; no HAM10000 copy at {folder})"


def baseline_transforms(size: tuple[int, int]) -> tuple[v2.Compose, v2.Compose]:
    """(training, evaluation) per-image transforms, PIL in, float CHW tensor out.

    ToTensor is spelled PILToTensor + ToDtype (its v2 form); the values stay on the 0-255 scale our models
    take (their normalisation is inside the network), which costs the same as ToTensor's division.
    """
    to_tensor = [v2.PILToTensor(), v2.ToDtype(torch.float32)]
    train = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.4, 1.0), ratio=(0.75, 1.33), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomRotation(180),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03),
        *to_tensor,
    ])
    return train, v2.Compose(to_tensor)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> None:
    model.train()
    loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def build_runners(arch: str, pool: np.ndarray, batch: int, seed: int) -> dict[str, dict[str, object]]:
    """{measure: {"skinscan": fn, "baseline": fn}}; each call of a fn processes one batch of `batch` images."""
    size = pool.shape[1:3]
    pool_tensor = torch.from_numpy(pool)
    augment_config = AugmentConfig()
    generator = torch.Generator().manual_seed(seed)
    train_transform, eval_transform = baseline_transforms(size)

    torch.manual_seed(seed)
    fast_model = create_model(arch).to(memory_format=torch.channels_last)
    torch.manual_seed(seed)
    base_model = create_model(arch)  # default (contiguous NCHW) memory format
    fast_optimizer = torch.optim.AdamW(fast_model.parameters(), lr=1e-3, weight_decay=0.05)
    base_optimizer = torch.optim.AdamW(base_model.parameters(), lr=1e-3, weight_decay=0.05)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(pool), (batch,), generator=generator)
        return index, torch.randint(7, (batch,), generator=generator)

    def fast_augment(index):
        return augment_batch(pool_tensor[index], augment_config, generator)

    def base_augment(index, transform=train_transform):
        return torch.stack([transform(Image.fromarray(pool[i])) for i in index.tolist()])

    def fast_train():
        index, labels = draw()
        train_step(fast_model, fast_optimizer, fast_augment(index), labels)

    def base_train():
        index, labels = draw()
        train_step(base_model, base_optimizer, base_augment(index), labels)

    def fast_features():
        fast_model.eval()
        with torch.inference_mode():
            fast_model(to_model_input(pool_tensor[draw()[0]]))

    def base_features():
        base_model.eval()
        with torch.inference_mode():
            base_model(base_augment(draw()[0], eval_transform))

    return {
        "train_step": {"skinscan": fast_train, "baseline": base_train},
        "feature_extraction": {"skinscan": fast_features, "baseline": base_features},
        "augmentation": {"skinscan": lambda: fast_augment(draw()[0]), "baseline": lambda: base_augment(draw()[0])},
    }


def measure(runners: dict, batch: int, steps: int, warmup: int, rounds: int) -> dict:
    results = {}
    for key, pipelines in runners.items():
        print(f"measuring {MEASURES[key]} ...", file=sys.stderr, flush=True)
        measured = interleaved_latency(pipelines, steps, warmup, rounds, batch_size=batch)
        ratio = measured["skinscan"]["images_per_s"] / measured["baseline"]["images_per_s"]
        results[key] = {**measured, "ratio": ratio}
    return results


def format_table(report: dict) -> str:
    height, width = report["size"]
    lines = [
        f"train throughput: {report['arch']} {height}x{width}, batch {report['batch']}, {report['threads']} torch "
        f"thread(s), {report['cpu']}",
        f"input: {report['images']}",
        f"{report['steps']} timed batches per pipeline and measure in {report['rounds']} interleaved round(s) after "
        f"{report['warmup']} warm-up; images/s at the best round's median",
        "",
    ]
    rows = [("MEASURE", "SKINSCAN img/s", "BASELINE img/s", "SKINSCAN / BASELINE")]
    for key, label in MEASURES.items():
        r = report["results"][key]
        rows.append((label, f"{r['skinscan']['images_per_s']:.1f}", f"{r['baseline']['images_per_s']:.1f}",
                     f"{r['ratio']:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                                         strict=True)]))
    lines += ["", *(f"{name}: {text}" for name, text in report["pipelines"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="mobilenet_v3_small",
                        choices=["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"])
    parser.add_argument("--size", type=int, nargs=2, default=(168, 224), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed batches per pipeline and measure")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per pipeline and measure first")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds the steps are split into")
    parser.add_argument("--images", type=int, default=256, help="how many images to draw batches from")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.rounds, args.images) < 1 or args.warmup < 0:
        parser.error("--batch, --steps, --rounds and --images must be at least 1, --warmup at least 0")

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    size = (args.size[0], args.size[1])
    pool, source = load_images(size, args.images, args.seed)
    results = measure(build_runners(args.arch, pool, args.batch, args.seed), args.batch, args.steps, args.warmup,
                      args.rounds)
    report = {
        "arch": args.arch, "size": list(size), "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "rounds": min(args.rounds, args.steps), "threads": threads, "images": source,
        "cpu": f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "pipelines": {
            "skinscan": "uint8 NHWC batch -> augment_batch (batched affine grid_sample + colour matrix) -> "
                        "channels_last model",
            "baseline": "per image: PIL -> transforms.v2 RandomResizedCrop, H/V flips, RandomRotation, ColorJitter, "
                        "to tensor -> stacked NCHW contiguous batch -> model",
        },
        "results": results,
    }
    print(format_table(report))
    if args.json:
        print(f"results: {write_json(report, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
