"""FP32 vs the shipped INT8 vs INT8 variants: whole-model latency interleaved run by run, optionally val accuracy.

    python benchmarks/int8_variants_timing.py [--model PACKAGE] [--baseline PACKAGE] [--iterations 1000]
        [--float-blocks N [N ...]] [--score val]

Builds INT8 variants of the package's FP32 graph with the first N blocks left float (`quantize_package_model(...,
float_blocks=N)`, the same calibration as `skinscan quantize`; by default N = 0, all-INT8; a variant the
quantizer refuses, such as all-INT8 behind colour constancy, is skipped with the reason), then times the graphs
(1 thread, batch 1, random pixels): every iteration runs each graph once, in a fresh random order, so that this
VM's slow and fast phases (whole runs scatter by +-30%) hit all graphs alike. Prints each graph's median and 20th
percentile and FP32 / graph for both. `--baseline` adds another package's FP32 and INT8 graphs to the same
iterations (e.g. the bundled model before a graph change). `--score val` adds the other side of the trade-off:
each graph's balanced accuracy, macro AUC and top-1 agreement with the FP32 graph on the val part (never test:
picking a variant is model selection). The docs/RESULTS.md "INT8 speed" sections quote such runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from skinscan.factory.data import default_data_dir, load_split_images
from skinscan.factory.metrics import classification_metrics
from skinscan.factory.onnx_metadata import read_metadata
from skinscan.factory.quantize import onnx_probabilities, quantize_package_model, sample_calibration_images
from skinscan.labels import LabelSet
from skinscan.runtime.benchmark import onnx_session, timed_turns, write_json
from skinscan.runtime.classifier import FP32_FILE, INPUT_NAME, INT8_FILE, Classifier, bundled_package_dir


def interleaved_times(sessions: dict, image: np.ndarray, iterations: int, warmup: int = 20) -> dict:
    """Milliseconds of each session's runs, every iteration running each session once in shuffled order."""
    runners = {name: (lambda session=session: session.run(None, {INPUT_NAME: image}))
               for name, session in sessions.items()}
    for run in runners.values():
        for _ in range(warmup):
            run()
    shuffle = np.random.default_rng(0)
    return timed_turns(runners, (list(shuffle.permutation(list(runners))) for _ in range(iterations)))


def variant_name(float_blocks: int) -> str:
    return "int8 (all blocks)" if float_blocks == 0 else f"int8 (float blocks {float_blocks})"


def accuracy(files: dict, images: np.ndarray, labels: np.ndarray, codes: list[str]) -> dict:
    """Balanced accuracy, macro AUC and top-1 agreement with the package's FP32 graph, per graph."""
    probabilities = {name: onnx_probabilities(path, images) for name, path in files.items()}
    reference = probabilities["fp32"].argmax(1)
    scores = {}
    for name, p in probabilities.items():
        metrics = classification_metrics(labels, p, codes, n_bootstrap=0)
        scores[name] = {"balanced_accuracy": float(metrics["balanced_accuracy"]),
                        "macro_auc": float(metrics["macro_auc"]),
                        "top1_agreement_with_fp32": float((p.argmax(1) == reference).mean())}
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model package (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--baseline", type=Path, default=None, help="another package timed alongside")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--float-blocks", type=int, nargs="+", default=[0], metavar="N",
                        help="INT8 variants to build and time: the stem and the first N-1 blocks float (0 = all-INT8)")
    parser.add_argument("--score", choices=["val"], help="also score every graph on this split part")
    parser.add_argument("--score-images", type=int, default=0,
                        help="score on a class-stratified subset of about this many images (default: the whole part)")
    parser.add_argument("--json", type=Path, default=Path("runs/int8_variants_timing.json"))
    args = parser.parse_args()
    package = args.model or bundled_package_dir()
    config = Classifier.load(package, precision="fp32").config
    with tempfile.TemporaryDirectory() as tmp:
        calibration = sample_calibration_images(args.data, args.split, config)
        files = {"fp32": package / FP32_FILE, "int8 (shipped)": package / INT8_FILE}
        for float_blocks in args.float_blocks:
            variant = Path(tmp) / f"int8-float-{float_blocks}.onnx"
            try:
                quantize_package_model(package / FP32_FILE, variant, calibration, float_blocks=float_blocks)
                files[variant_name(float_blocks)] = variant
            except ValueError as error:  # e.g. colour constancy in front of the stem: refused before calibrating
                print(f"no {'all-INT8' if float_blocks == 0 else variant_name(float_blocks)} variant of this "
                      f"package: {error}")
        scores = {}
        if args.score:
            label_set = LabelSet.from_metadata(read_metadata(onnx.load(str(package / FP32_FILE))))
            images, labels, _ = load_split_images(args.data, args.split, args.score, config,
                                                  max_images=args.score_images, labels=label_set)
            scores = accuracy({name: path for name, path in files.items() if not name.startswith("baseline")},
                              images, labels, list(label_set.codes))
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
                        "fp32_over_this_p20": float(np.percentile(reference, 20) / np.percentile(values, 20)),
                        **({f"{args.score}_{key}": value for key, value in scores[name].items()}
                           if name in scores else {})}
    print(f"{args.iterations} interleaved iterations, 1 thread, batch 1 (baseline rows: against the baseline's FP32)"
          + (f"; {args.score}: {len(labels)} images, balanced accuracy / macro AUC / top-1 agreement with FP32"
             if scores else ""))
    for name, r in report.items():
        score = scores.get(name)
        print(f"{name:24s} median {r['median_ms']:.2f} ms, p20 {r['p20_ms']:.2f} ms -> FP32/this "
              f"{r['fp32_over_this']:.2f}x (p20 {r['fp32_over_this_p20']:.2f}x)"
              + (f"; {score['balanced_accuracy']:.3f} / {score['macro_auc']:.3f} / "
                 f"{score['top1_agreement_with_fp32']:.3f}" if score else ""))
    print(f"results: {write_json(report, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
