"""Training images/s on this machine's GPU (or CPU): eager fp32 vs channels_last vs autocast vs autocast + compile.

    python benchmarks/gpu_train_throughput.py [--device auto] [--arch mobilenet_v3_small] [--size 210 280]
        [--batch 256] [--steps 30] [--chunk 5] [--warmup 3] [--rounds 3] [--configs NAME ...]
        [--compile-backend inductor] [--json out.json]

Every configuration runs the training step of `skinscan.factory.train.train_one_epoch` on the same random uint8
batches (speed does not depend on pixel values or weights): host batch -> device through pinned memory
(`skinscan.factory.train.to_device`) -> `augment_batch` on the device -> forward -> label-smoothed cross-entropy ->
backward (loss scaling under fp16) -> AdamW. The configurations (`--configs`):

  eager-fp32        NCHW contiguous, fp32, eager: the baseline every ratio is measured against, in this run
  channels_last     + channels_last memory format (what skinscan trains with)
  autocast          + autocast at skinscan's dtype (`skinscan.factory.train.autocast_dtype`: bf16 on GPUs that have it,
                    else fp16); on a CPU, bf16 CPU autocast, which skinscan's training leaves off (it is slower
                    there: this row shows by how much)
  autocast+compile  + torch.compile of the network, as `skinscan train --compile` does (`compile_for_training`)

Each timed call is `--chunk` steps followed by one device synchronisation (training, too, reads the loss back
only every `skinscan.factory.train.SYNC_EVERY` steps, so the host prepares the next batch while the GPU computes);
the configurations take turns in rounds
and each keeps its best round's median (`skinscan.runtime.benchmark.interleaved_latency`), so background load hits
all of them alike. Warm-up calls are untimed: the compile configuration compiles during its first warm-up
call (minutes: 197 s for MobileNetV3-Small on our 2-core CPU), so `--warmup` must be at least 1.

Without a GPU the script says so and measures the CPU; by default it then skips autocast+compile, whose
compile takes minutes there (ask for it with --configs).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from skinscan.factory.augment import AugmentConfig, augment_batch
from skinscan.factory.model import create_model
from skinscan.factory.train import autocast_dtype, compile_for_training, select_device, to_device
from skinscan.runtime.benchmark import cpu_name, interleaved_latency, write_json

CONFIGS = {
    "eager-fp32": "NCHW contiguous, fp32, eager (the baseline)",
    "channels_last": "channels_last, fp32, eager",
    "autocast": "channels_last, autocast, eager",
    "autocast+compile": "channels_last, autocast, torch.compile",
}
BASELINE = "eager-fp32"
CPU_DEFAULT_CONFIGS = ("eager-fp32", "channels_last", "autocast")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)"


def benchmark_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype skinscan trains with on this device; bf16 on a CPU (where training uses none)."""
    return autocast_dtype(device) or torch.bfloat16


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(config: str, arch: str, pool: torch.Tensor, batch: int, device: torch.device, seed: int,
               compile_backend: str, chunk: int = 1, num_classes: int = 7):
    """A callable doing `chunk` training steps of `config` on a fresh model (a new batch each), then a sync."""
    torch.manual_seed(seed)
    memory_format = torch.contiguous_format if config == BASELINE else torch.channels_last
    model = create_model(arch, num_classes=num_classes).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    dtype = benchmark_dtype(device) if config.startswith("autocast") else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if config == "autocast+compile":
        compile_for_training(model, compile_backend)
    generator = torch.Generator().manual_seed(seed)
    augment_config = AugmentConfig()

    def step() -> None:
        index = torch.randint(len(pool), (batch,), generator=generator)
        labels = to_device(torch.randint(num_classes, (batch,), generator=generator), device)
        images = augment_batch(to_device(pool[index], device), augment_config, generator)
        if memory_format == torch.contiguous_format:
            images = images.contiguous()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def steps() -> None:
        for _ in range(chunk):
            step()
        synchronize(device)

    return steps


def measure(configs: list[str], arch: str, size: tuple[int, int], batch: int, steps: int, warmup: int, rounds: int,
            device: torch.device, seed: int, compile_backend: str, images: int, chunk: int = 1) -> dict:
    """{config: images/s, latency and the ratio to eager-fp32}; `steps` timed calls of `chunk` steps each."""
    pool = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (images, *size, 3), dtype=np.uint8))
    runners = {}
    for config in configs:
        print(f"building {config} ...", file=sys.stderr, flush=True)
        runners[config] = build_step(config, arch, pool, batch, device, seed, compile_backend, chunk)
    print(f"measuring {', '.join(configs)} (warm-up{' and compile' if 'autocast+compile' in configs else ''} first)"
          " ...", file=sys.stderr, flush=True)
    measured = interleaved_latency(runners, steps, warmup, rounds, batch_size=batch * chunk)
    baseline = measured[BASELINE]["images_per_s"]
    return {name: {**result, "ms_per_step": result["median_ms"] / chunk,
                   "ratio_vs_eager_fp32": result["images_per_s"] / baseline} for name, result in measured.items()}


def format_table(report: dict) -> str:
    height, width = report["size"]
    lines = [
        f"training throughput: {report['arch']} {height}x{width}, batch {report['batch']}, on {report['device']}",
        f"{report['steps']} timed calls of {report['chunk']} step(s) per configuration in {report['rounds']} "
        f"interleaved round(s) after {report['warmup']} warm-up call(s); images/s at the best round's median",
    ]
    if report["note"]:
        lines.append(report["note"])
    rows = [("CONFIG", "IMG/S", "MS/STEP", "VS EAGER FP32", "WHAT")]
    for name, r in report["results"].items():
        what = CONFIGS[name].replace("autocast", f"autocast {report['autocast_dtype']}")
        if name == "autocast+compile":
            what += f" ({report['compile_backend']})"
        rows.append((name, f"{r['images_per_s']:.1f}", f"{r['ms_per_step']:.1f}", f"{r['ratio_vs_eager_fp32']:.2f}x",
                     what))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    for row in rows:
        lines.append("  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:4], widths[1:4],
                                                                                     strict=True)), row[4]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (a GPU if present, else the CPU), cuda, cuda:1, cpu")
    parser.add_argument("--arch", default="mobilenet_v3_small",
                        choices=["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"])
    parser.add_argument("--size", type=int, nargs=2, default=(210, 280), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 256 on a GPU, 32 on a CPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed calls per configuration")
    parser.add_argument("--chunk", type=int, default=5, help="training steps per timed call (one sync per call)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per configuration first (compiles)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the steps are split into")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help=f"what to measure (default: all on a GPU; {', '.join(CPU_DEFAULT_CONFIGS)} on a CPU); "
                             f"{BASELINE} is always measured")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of autocast+compile")
    parser.add_argument("--images", type=int, default=512, help="how many random host images to draw batches from")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.steps, args.chunk, args.rounds, args.images, args.batch or 1) < 1 or args.warmup < 1:
        parser.error("--batch, --steps, --chunk, --rounds, --images and --warmup must be at least 1 (a warm-up "
                     "call keeps compilation out of the timings)")

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = select_device(args.device)
    on_gpu = device.type == "cuda"
    note = "" if on_gpu else ("no GPU present: measuring the CPU" + ("" if args.configs else
                              "; autocast+compile skipped (compiling takes minutes on a CPU; ask with --configs)"))
    if note:
        print(note, file=sys.stderr)
    configs = list(dict.fromkeys([BASELINE, *(args.configs or (CONFIGS if on_gpu else CPU_DEFAULT_CONFIGS))]))
    batch = args.batch or (256 if on_gpu else 32)
    size = (args.size[0], args.size[1])
    results = measure(configs, args.arch, size, batch, args.steps, args.warmup, args.rounds, device, args.seed,
                      args.compile_backend, args.images, args.chunk)
    report = {
        "arch": args.arch, "size": list(size), "batch": batch, "steps": args.steps, "chunk": args.chunk,
        "warmup": args.warmup,
        "rounds": min(args.rounds, args.steps), "device": device_name(device), "device_type": device.type,
        "autocast_dtype": str(benchmark_dtype(device)).replace("torch.", ""), "compile_backend": args.compile_backend,
        "torch": torch.__version__, "python": platform.python_version(), "note": note,
        "step": "host uint8 batch -> pinned non_blocking copy -> augment_batch -> forward -> cross-entropy -> "
                "backward -> AdamW, then a device synchronisation",
        "results": results,
    }
    print(format_table(report))
    if args.json:
        print(f"results: {write_json(report, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
