"""FP32 vs the shipped mixed-precision INT8 vs an all-INT8 graph: whole-model latency, interleaved run by run.

    python benchmarks/int8_variants_timing.py [--model PACKAGE] [--baseline PACKAGE] [--iterations 1000]

Builds the all-INT8 variant of the package's FP32 graph (`quantize_package_model(..., float_blocks=0)`, the
same calibration as `skinscan quantize`; skipped, with the reason, for graphs it refuses such as colour
constancy in front of the stem), then times the graphs (1 thread, batch 1, random pixels): every iteration runs
each graph once, in a fresh random order, so that this VM's slow and fast phases (whole runs scatter by +-30%)
hit all graphs alike. Prints each graph's median and 20th percentile and FP32 / graph for both. `--baseline`
adds another package's FP32 and INT8 graphs to the same iterations (e.g. the bundled model before a graph
change). The docs/RESULTS.md "INT8 speed" sections quote such runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from skinscan.benchmark import onnx_session, timed_turns, write_json
from skinscan.data import default_data_dir
from skinscan.quantize import quantize_package_model, sample_calibration_images
from skinscan.runtime import FP32_FILE, INPUT_NAME, INT8_FILE, Classifier, bundled_package_dir


def interleaved_times(sessions: dict, image: np.ndarray, iterations: int, warmup: int = 20) -> dict:
    """Milliseconds of each session's runs, every iteration running each session once in shuffled order."""
    runners = {name: (lambda session=session: session.run(None, {INPUT_NAME: image}))
               for name, session in sessions.items()}
    for run in runners.values():
        for _ in range(warmup):
            run()
    shuffle = np.random.default_rng(0)
    return timed_turns(runners, (list(shuffle.permutation(list(runners))) for _ in range(iterations)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model package (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--baseline", type=Path, default=None, help="another package timed alongside")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=Path("runs/int8_variants_timing.json"))
    args = parser.parse_args()
    package = args.model or bundled_package_dir()
    config = Classifier.load(package, precision="fp32").config
    with tempfile.TemporaryDirectory() as tmp:
        all_int8 = Path(tmp) / "all-int8.onnx"
        calibration = sample_calibration_images(args.data, args.split, config)
        files = {"fp32": package / FP32_FILE, "int8 (shipped)": package / INT8_FILE}
        try:
            quantize_package_model(package / FP32_FILE, all_int8, calibration, float_blocks=0)
            files["int8 (all blocks)"] = all_int8
        except ValueError as error:  # e.g. colour constancy in front of the stem: refused before calibrating
            print(f"no all-INT8 variant of this package: {error}")
        if args.baseline:
            files |= {"baseline fp32": args.baseline / FP32_FILE, "baseline int8": args.baseline / INT8_FILE}
        sessions = {name: onnx_session(path, 1) for name, path in files.items()}
        image = np.random.default_rng(0).integers(0, 256, (1, *config.size, 3), dtype=np.uint8)
        times = interleaved_times(sessions, image, args.iterations)
    report = {}
    for name, values in times.items():
        reference = times["baseline fp32" if name.startswith("baseline") else "fp32"]
        report[name] = {"median_ms": float(np.median(values)), "p20_ms": float(np.percentile(values, 20)),
                        "fp32_over_this": float(np.median(reference) / np.median(values)),
                        "fp32_over_this_p20": float(np.percentile(reference, 20) / np.percentile(values, 20))}
    print(f"{args.iterations} interleaved iterations, 1 thread, batch 1 (baseline rows: against the baseline's FP32)")
    for name, r in report.items():
        print(f"{name:20s} median {r['median_ms']:.2f} ms, p20 {r['p20_ms']:.2f} ms -> FP32/this "
              f"{r['fp32_over_this']:.2f}x (p20 {r['fp32_over_this_p20']:.2f}x)")
    print(f"results: {write_json(report, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
