"""Where FP32 and INT8 spend their time: ONNX Runtime's per-kernel profile of a package's two models.

    python benchmarks/int8_profile.py [--model PACKAGE] [--runs 300] [--json out.json]

Whole-model timings on a shared 2-core VM scatter by +-30% between runs; per-kernel times are steadier. Each
model runs `--runs` times with profiling on (1 thread, batch 1, random pixels); each node's kernel time is
the 20th percentile of its runs (the unloaded cost). Printed: the sums by op type and the slowest nodes;
the JSON has every node (the convolution split in docs/RESULTS.md, stem / depthwise / pointwise, was summed
from those per-node times).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skinscan.runtime.benchmark import write_json
from skinscan.runtime.classifier import FP32_FILE, INPUT_NAME, INT8_FILE, PROBABILITIES, bundled_package_dir


def kernel_profile(model_path: Path, runs: int, prefix: str) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling, options.profile_file_prefix = True, prefix
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    height, width = session.get_inputs()[0].shape[1:3]
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    for _ in range(runs):
        session.run([PROBABILITIES], {INPUT_NAME: image})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[(event["args"]["op_name"], event["name"][:-len("_kernel_time")])].append(event["dur"])
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = {}
    for (op, node), durations in per_node.items():
        by_node[f"{op} {node}"] = float(np.percentile(durations, 20)) / 1000
        by_op[op] += by_node[f"{op} {node}"]
    return {"total_ms": sum(by_op.values()), "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "by_node_ms": dict(sorted(by_node.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model package (default: the bundled one)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path, default=Path("runs/int8_profile.json"))
    args = parser.parse_args()
    package = args.model or bundled_package_dir()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    prefix = str(args.json.parent / "ort_profile")
    results = {name: kernel_profile(package / file, args.runs, f"{prefix}_{name}")
               for name, file in (("fp32", FP32_FILE), ("int8", INT8_FILE))}
    for name, result in results.items():
        print(f"{name}: kernels {result['total_ms']:.2f} ms (20th-percentile sums, 1 thread, batch 1)")
        print("  by op:   " + ", ".join(f"{op} {ms:.3f}" for op, ms in result["by_op_ms"].items()))
        for node, ms in list(result["by_node_ms"].items())[:8]:
            print(f"  {ms:.3f}  {node}")
    print(f"results: {write_json(results, args.json)}")


if __name__ == "__main__":
    main()
