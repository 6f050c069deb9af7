"""FP32 vs the shipped mixed-precision INT8 vs an all-INT8 graph: interleaved whole-model latency, same process.

    python benchmarks/int8_variants_timing.py [--model PACKAGE] [--data DIR] [--split CSV] [--rounds 9]

Builds the all-INT8 variant of the package's FP32 graph (`quantize_package_model(..., float_blocks=0)`, the
same calibration as `skinscan quantize`), then times the three graphs round-robin (1 thread, batch 1, random
pixels; each round 10 warm-up and 100 timed runs per graph) so that the VM's slow and fast phases hit all
three alike. Prints each graph's median of round medians and the ratio FP32 / graph. The docs/RESULTS.md
"Cannot assess" section quotes two such runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from skinscan.benchmark import onnx_session, write_json
from skinscan.data import default_data_dir
from skinscan.quantize import quantize_package_model, sample_calibration_images
from skinscan.runtime import FP32_FILE, INPUT_NAME, INT8_FILE, Classifier, bundled_package_dir


def round_medians(sessions: dict, image: np.ndarray, rounds: int, warmup: int = 10, runs: int = 100) -> dict:
    medians = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(warmup):
                session.run(None, {INPUT_NAME: image})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, {INPUT_NAME: image})
                times.append(time.perf_counter() - start)
            medians[name].append(1000 * float(np.median(times)))
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model package (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path, default=Path("runs/int8_variants_timing.json"))
    args = parser.parse_args()
    package = args.model or bundled_package_dir()
    config = Classifier.load(package, precision="fp32").config
    with tempfile.TemporaryDirectory() as tmp:
        all_int8 = Path(tmp) / "all-int8.onnx"
        calibration = sample_calibration_images(args.data, args.split, config)
        quantize_package_model(package / FP32_FILE, all_int8, calibration, float_blocks=0)
        files = {"fp32": package / FP32_FILE, "int8 (shipped)": package / INT8_FILE, "int8 (all blocks)": all_int8}
        sessions = {name: onnx_session(path, 1) for name, path in files.items()}
        image = np.random.default_rng(0).integers(0, 256, (1, *config.size, 3), dtype=np.uint8)
        medians = round_medians(sessions, image, args.rounds)
    base = np.median(medians["fp32"])
    report = {name: {"median_ms": float(np.median(values)), "round_medians_ms": values,
                     "fp32_over_this": float(base / np.median(values))} for name, values in medians.items()}
    for name, r in report.items():
        print(f"{name:20s} {r['median_ms']:.2f} ms (rounds {np.round(r['round_medians_ms'], 2)}) -> FP32/this "
              f"{r['fp32_over_this']:.2f}x")
    print(f"results: {write_json(report, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
