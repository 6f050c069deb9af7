"""Inference speed of a model package on this machine: PyTorch eager vs ONNX Runtime FP32 vs INT8, in one run.

Torch-free: a checkpoint's PyTorch eager engine is built by `skinscan.factory.eager` and passed in. The timing
helpers (`measure_latency`, `interleaved_latency`, `compare_latency`) are reused by the quantization report.

Why interleaved rounds: on a shared machine (a training job next door, a laptop's turbo, this project's VM,
whose speed flips between two phases), background load drifts over seconds. Running engine A for 200 calls
and then engine B would charge the drift to whichever ran at the worse moment. Instead the engines take
turns call by call (the order rotating), in several rounds, and each keeps its best round's median: load
then hits all engines alike, and the best round is the least disturbed one. (Turns of a whole round per
engine, the first version, still let a phase flip land on one engine's round: the same two graphs measured
1.12x and 1.22x apart in two quantization reports.)
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from skinscan import __version__
from skinscan.runtime.classifier import FP32_FILE, INPUT_NAME, INT8_FILE, PROBABILITIES, bundled_package_dir
from skinscan.runtime.manifest import MANIFEST, verify_file

EAGER, ONNX_FP32, ONNX_INT8 = "pytorch-eager", "onnx-fp32", "onnx-int8"
ENGINES = (EAGER, ONNX_FP32, ONNX_INT8)

__all__ = ["ENGINES", "compare_latency", "cpu_name", "format_table", "interleaved_latency", "measure_latency",
           "onnx_session", "run_benchmark", "write_json"]


# --------------------------------------------------------------------------------------------- timing
def summarize_times(times_ms: Sequence[float], batch_size: int = 1) -> dict:
    """Per-call times (ms) -> median and 90th-percentile latency, and images/s at the median."""
    times = np.asarray(times_ms, dtype=np.float64)
    median = float(np.median(times))
    return {"median_ms": median, "p90_ms": float(np.percentile(times, 90)),
            "images_per_s": batch_size * 1000.0 / median if median > 0 else float("inf")}


def measure_latency(run_fn: Callable[[], object], iterations: int = 200, warmup: int = 20,
                    batch_size: int = 1) -> dict:
    """Call `run_fn` `warmup` times untimed, then `iterations` times timed, one call at a time.

    Returns {"median_ms", "p90_ms", "images_per_s"} (images/s = batch_size / median latency).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    for _ in range(warmup):
        run_fn()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        run_fn()
        times[i] = (time.perf_counter() - start) * 1000.0
    return summarize_times(times, batch_size)


def timed_turns(runners: dict[str, Callable[[], object]], orders) -> dict[str, list[float]]:
    """Milliseconds per call of each runner: every step of `orders` (a sequence of name lists) calls the
    runners it names once, in that order. The interleaving both `interleaved_latency` and the INT8 timing
    benchmark are built on."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for order in orders:
        for name in order:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def interleaved_latency(runners: dict[str, Callable[[], object]], iterations: int = 200, warmup: int = 20,
                        rounds: int = 5, batch_size: int = 1) -> dict[str, dict]:
    """`measure_latency` for several engines at once, interleaved call by call (see the module docstring).

    Each engine is warmed up; then `rounds` rounds of ceil(iterations / rounds) steps, each step timing one
    call of every engine, the order rotating from step to step so that none always runs first.
    Each engine reports its best round (lowest median) plus every round's median in `round_medians_ms`.
    """
    if iterations < 1 or rounds < 1:
        raise ValueError(f"iterations and rounds must be at least 1, got {iterations} and {rounds}")
    rounds = min(rounds, iterations)
    per_round = math.ceil(iterations / rounds)
    for run_fn in runners.values():
        for _ in range(warmup):
            run_fn()
    names = list(runners)
    best: dict[str, dict] = {}
    medians: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shifts = ((r + step) % (len(names) or 1) for step in range(per_round))
        times = timed_turns(runners, [names[shift:] + names[:shift] for shift in shifts])
        for name in names:
            result = summarize_times(times[name], batch_size)
            medians[name].append(result["median_ms"])
            if name not in best or result["median_ms"] < best[name]["median_ms"]:
                best[name] = result
    return {name: {**best[name], "round_medians_ms": medians[name], "iterations": per_round * rounds}
            for name in names}


# ------------------------------------------------------------------------------------------- engines
def onnx_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session as the runtime makes one: `threads` intra-op, 1 inter-op, all optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session: ort.InferenceSession, images: np.ndarray) -> Callable[[], object]:
    feed = {INPUT_NAME: np.ascontiguousarray(images)}
    return lambda: session.run([PROBABILITIES], feed)


def compare_latency(models: dict[str, str | Path], images: np.ndarray, threads: int = 1, iterations: int = 200,
                    warmup: int = 20, rounds: int = 5) -> dict:
    """Latency of several ONNX files on the same uint8 batch, interleaved; the quantization report's numbers.

    models: {"fp32": path, "int8": path, ...}. Returns {"threads", "batch", name: {"median_ms", "p90_ms",
    "images_per_s", ...} for each model, and "int8_vs_fp32" = fp32 median / int8 median when both are given}.
    """
    sessions = {name: onnx_session(path, threads) for name, path in models.items()}
    runners = {name: onnx_runner(session, images) for name, session in sessions.items()}
    measured = interleaved_latency(runners, iterations, warmup, rounds, batch_size=len(images))
    result: dict = {"threads": threads, "batch": int(len(images)), **measured}
    if "fp32" in measured and "int8" in measured:
        result["int8_vs_fp32"] = measured["fp32"]["median_ms"] / measured["int8"]["median_ms"]
    return result


def model_input_size(session: ort.InferenceSession) -> tuple[int, int]:
    """(H, W) from the `skinscan.preprocess` metadata, else from a static input shape."""
    custom = session.get_modelmeta().custom_metadata_map
    if "skinscan.preprocess" in custom:
        size = json.loads(custom["skinscan.preprocess"])["size"]
        return int(size[0]), int(size[1])
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[2], int):
        return shape[1], shape[2]
    raise ValueError("the model has no skinscan.preprocess metadata and no static input size; "
                     "benchmark a model package from `skinscan export`")


def _megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6


class EagerEngine(NamedTuple):
    """A training checkpoint as a PyTorch eager engine; `skinscan.factory.eager.load_eager_engine` builds one.

    Built by the factory (torch, the model definitions), measured here: the runtime itself never imports torch.
    """

    path: Path                          # the checkpoint file
    model: Any                          # skinscan.factory.export.PackagedModel: uint8 NHWC in, like the ONNX graph
    torch: Any                          # the torch module
    input_size: tuple[int, int] | None  # from the checkpoint's preprocess config


def _resolve_package(model: str | Path | None) -> Path:
    path = bundled_package_dir() if model is None else Path(model).expanduser()
    return path.parent if path.is_file() else path


# ---------------------------------------------------------------------------------------------- main
def run_benchmark(model: str | Path | None = None, eager: EagerEngine | None = None,
                  threads: Sequence[int] | None = None, batches: Sequence[int] = (1,), iterations: int = 200,
                  warmup: int = 20, rounds: int = 5, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Measure every available engine at every (threads, batch) setting; returns the JSON-ready report.

    model: a package folder (or an .onnx file in one); None = the bundled package. Files listed in the
    package's manifest are verified before loading. eager: a checkpoint loaded as a PyTorch eager engine
    (`skinscan.factory.eager.load_eager_engine`), measured beside the ONNX files.
    threads: default 1 and all cores. Raises FileNotFoundError when there is nothing to measure.
    """
    threads = sorted(set(threads or (1, os.cpu_count() or 1)))
    batches = sorted(set(batches))
    if min(threads) < 1 or min(batches) < 1:
        raise ValueError(f"threads and batch sizes must be at least 1, got {threads} and {batches}")
    progress = progress or (lambda message: None)
    notes: list[str] = []
    package = _resolve_package(model)
    files: dict[str, dict] = {}
    onnx_files: dict[str, Path] = {}
    has_manifest = (package / MANIFEST).is_file()
    for engine, name in ((ONNX_FP32, FP32_FILE), (ONNX_INT8, INT8_FILE)):
        path = package / name
        if not path.is_file():
            notes.append(f"{engine} skipped: no {name} in {package}")
            continue
        if has_manifest:
            verify_file(package, name)  # IntegrityError names the file and what to do
        onnx_files[engine] = path
        files[engine] = {"path": str(path), "megabytes": _megabytes(path)}
    if onnx_files and not has_manifest:
        notes.append(f"{package} has no {MANIFEST}: the ONNX files were not verified")

    if eager is not None:
        parameters = sum(p.numel() * p.element_size() for p in eager.model.parameters())
        files[EAGER] = {"path": str(eager.path), "megabytes": _megabytes(eager.path),
                        "parameter_megabytes": parameters / 1e6}
    else:
        notes.append("PyTorch eager skipped: pass --checkpoint CKPT.pt to include it")
    if not onnx_files and eager is None:
        raise FileNotFoundError(f"nothing to benchmark: no {FP32_FILE} or {INT8_FILE} in {package} and no usable "
                                "--checkpoint; pass --model PACKAGE_DIR (from `skinscan export`)")

    if onnx_files:
        size = model_input_size(onnx_session(next(iter(onnx_files.values())), 1))
        if eager is not None and eager.input_size is not None and eager.input_size != size:
            raise ValueError(f"the checkpoint's input size {eager.input_size} differs from the package's {size}; "
                             "pass the checkpoint the package was exported from")
    elif eager.input_size is not None:
        size = eager.input_size
    else:
        raise ValueError("the checkpoint has no preprocess config; pass --model PACKAGE_DIR to set the input size")

    rng = np.random.default_rng(seed)
    results, speedups = [], []
    torch_threads = eager.torch.get_num_threads() if eager is not None else None
    try:
        for thread_count in threads:
            sessions = {engine: onnx_session(path, thread_count) for engine, path in onnx_files.items()}
            for batch in batches:
                engines = ([EAGER] if eager is not None else []) + list(sessions)
                progress(f"measuring {thread_count} thread(s), batch {batch}: {', '.join(engines)}")
                images = rng.integers(0, 256, size=(batch, *size, 3), dtype=np.uint8)
                runners = {}
                if eager is not None:
                    packaged, torch = eager.model, eager.torch
                    torch.set_num_threads(thread_count)
                    tensor = torch.from_numpy(images)

                    def run_eager(packaged=packaged, torch=torch, tensor=tensor):
                        with torch.inference_mode():
                            return packaged(tensor)

                    runners[EAGER] = run_eager
                runners.update({engine: onnx_runner(session, images) for engine, session in sessions.items()})
                measured = interleaved_latency(runners, iterations, warmup, rounds, batch_size=batch)
                for engine in ENGINES:
                    if engine in measured:
                        results.append({"engine": engine, "threads": thread_count, "batch": batch, **measured[engine]})
                speedups.append(_speedups(measured, thread_count, batch))
    finally:
        if torch_threads is not None:
            eager.torch.set_num_threads(torch_threads)

    return {
        "skinscan_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(eager.torch if eager else None),
        "model": {"package": str(package), "checkpoint": str(eager.path) if eager else None,
                  "input_size": list(size), "input": "random uint8 images [N, H, W, 3]"},
        "settings": {"threads": threads, "batch": batches, "iterations": iterations, "warmup": warmup,
                     "rounds": min(rounds, iterations), "statistic": "best round's median, rounds interleaved"},
        "files": files,
        "results": results,
        "speedups": speedups,
        "notes": notes,
    }


def _speedups(measured: dict, threads: int, batch: int) -> dict:
    """Ratios of median latencies at one setting (>1 = the second engine named is faster)."""
    row: dict = {"threads": threads, "batch": batch}
    median = {engine: m["median_ms"] for engine, m in measured.items()}
    if ONNX_FP32 in median and ONNX_INT8 in median:
        row["int8_vs_fp32"] = median[ONNX_FP32] / median[ONNX_INT8]
    if EAGER in median and ONNX_FP32 in median:
        row["fp32_vs_eager"] = median[EAGER] / median[ONNX_FP32]
    if EAGER in median and ONNX_INT8 in median:
        row["int8_vs_eager"] = median[EAGER] / median[ONNX_INT8]
    return row


def _machine(torch_module) -> dict:
    return {"cpu_count": os.cpu_count(), "processor": cpu_name(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "torch": torch_module.__version__ if torch_module else None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -------------------------------------------------------------------------------------------- output
def format_table(report: dict) -> str:
    """The report as plain aligned text (no colours, no box drawing): one row per engine and setting."""
    height, width = report["model"]["input_size"]
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"skinscan benchmark: {report['model']['package']} (input {height}x{width}, random uint8 images)",
        f"{machine['processor']}, {machine['cpu_count']} CPUs; onnxruntime {machine['onnxruntime']}"
        + (f", torch {machine['torch']}" if machine["torch"] else ""),
        f"{settings['iterations']} timed calls per engine and setting after {settings['warmup']} warm-up, in "
        f"{settings['rounds']} interleaved rounds; latency = the best round's median",
        "",
    ]
    fp32 = {(r["threads"], r["batch"]): r["median_ms"] for r in report["results"] if r["engine"] == ONNX_FP32}
    rows = [("ENGINE", "THREADS", "BATCH", "MEDIAN ms", "P90 ms", "IMAGES/s", "VS ONNX-FP32")]
    for r in report["results"]:
        reference = fp32.get((r["threads"], r["batch"]))
        rows.append((r["engine"], str(r["threads"]), str(r["batch"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                     f"{r['images_per_s']:.1f}", f"{reference / r['median_ms']:.2f}x" if reference else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    sizes = [f"{Path(f['path']).name} {f['megabytes']:.2f} MB" for f in report["files"].values()]
    if ONNX_FP32 in report["files"] and ONNX_INT8 in report["files"]:
        ratio = report["files"][ONNX_INT8]["megabytes"] / report["files"][ONNX_FP32]["megabytes"]
        sizes[-1] += f" ({ratio:.2f}x of fp32)"
    lines.append("files: " + ", ".join(sizes))
    int8 = [s for s in report["speedups"] if "int8_vs_fp32" in s]
    if int8:
        lines.append("INT8 vs FP32 speed-up (fp32 ms / int8 ms): " + "; ".join(
            f"{s['int8_vs_fp32']:.2f}x at {s['threads']} thread(s), batch {s['batch']}" for s in int8))
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
