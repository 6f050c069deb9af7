"""What the in-graph Grad-CAM output (`cam`) costs: a model package's latency with it and without it.

For each precision, the package's graph runs as shipped and as a copy with the `cam` output and the nodes
only it needs removed (`onnx.utils.Extractor`), in one interleaved run (`skinscan.runtime.benchmark`), 1 thread,
batch 1 by default. A third engine runs the shipped graph fetching only `probabilities`: ONNX Runtime runs
every node whatever is fetched, so clients that ignore the map still pay for it, and this shows it.

On a shared machine the difference of two ~4 ms timings is noisy, so a fourth engine runs the cam branch
alone (the nodes only `cam` needs, fed the tensors they read from the rest of the graph): a small, steady
timing of the same work, without the rest of the network's cache footprint.

    python benchmarks/cam_cost.py [--model PACKAGE] [--iterations 3000] [--rounds 150] [--json runs/cam_cost.json]

The headline number is the median over rounds of (with cam - without cam): many short rounds make that a
nearly paired comparison, which resists a shared machine's drifting load better than two best rounds do.

Needs `onnx` (the `train` extra) for the pruning; the timing itself is ONNX Runtime's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx.utils import Extractor

from skinscan.factory.quantize import explanation_only_nodes
from skinscan.runtime.benchmark import cpu_name, interleaved_latency, model_input_size, onnx_session, write_json
from skinscan.runtime.classifier import CAM, FP32_FILE, INPUT_NAME, INT8_FILE, PROBABILITIES, bundled_package_dir


def without_cam(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph minus the `cam` output and everything only it needed."""
    outputs = [o.name for o in model.graph.output if o.name != CAM]
    pruned = Extractor(model).extract_model([i.name for i in model.graph.input], outputs)
    pruned.metadata_props.extend(model.metadata_props)
    return pruned


def cam_branch_alone(model: onnx.ModelProto, feed: dict, threads: int, folder: Path):
    """A session on the cam branch only, and its feed: the tensors the branch reads from the rest of the
    graph, with their values for `feed`."""
    nodes = list(explanation_only_nodes(model))
    read = {name for node in nodes for name in node.input} - {name for node in nodes for name in node.output}
    shared_constants = [n for n in model.graph.node if n.op_type == "Constant" and set(n.output) & read]
    read -= {out for node in shared_constants for out in node.output} | {t.name for t in model.graph.initializer}
    inputs = sorted(read - {""})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in inputs)
    onnx.save(probe, str(folder / "probe.onnx"))
    values = dict(zip(inputs, onnx_session(folder / "probe.onnx", threads).run(inputs, feed), strict=True))
    graph = onnx.helper.make_graph(
        shared_constants + nodes, "cam-branch",
        [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
         for name, value in values.items()],
        [onnx.helper.make_empty_tensor_value_info(CAM)],
        [t for t in model.graph.initializer if any(t.name in node.input for node in nodes)])
    branch = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnx.save(branch, str(folder / "cam-branch.onnx"))
    return onnx_session(folder / "cam-branch.onnx", threads), values


def cam_cost(path: Path, threads: int, batch: int, iterations: int, rounds: int, seed: int = 0) -> dict:
    model = onnx.load(str(path))
    if CAM not in {o.name for o in model.graph.output}:
        raise SystemExit(f"{path} has no `{CAM}` output: nothing to measure (re-export the package)")
    with tempfile.TemporaryDirectory() as tmp:
        pruned_path = Path(tmp) / "without-cam.onnx"
        onnx.save(without_cam(model), str(pruned_path))
        with_cam, plain = onnx_session(path, threads), onnx_session(pruned_path, threads)
        size = model_input_size(with_cam)
        feed = {INPUT_NAME: np.random.default_rng(seed).integers(0, 256, (batch, *size, 3), dtype=np.uint8)}
        branch, branch_feed = cam_branch_alone(model, feed, threads, Path(tmp))
        measured = interleaved_latency({
            "without_cam": lambda: plain.run([PROBABILITIES], feed),
            "with_cam": lambda: with_cam.run([PROBABILITIES, CAM], feed),
            "with_cam_probabilities_only": lambda: with_cam.run([PROBABILITIES], feed),
            "cam_branch_alone": lambda: branch.run([CAM], branch_feed),
        }, iterations=iterations, warmup=50, rounds=rounds, batch_size=batch)
    base, cam = measured["without_cam"]["median_ms"], measured["with_cam"]["median_ms"]
    # Each round times the engines back to back, so a round's difference cancels most of the load drift.
    base_rounds = np.array(measured["without_cam"]["round_medians_ms"])
    added_rounds = np.array(measured["with_cam"]["round_medians_ms"]) - base_rounds
    return {"file": path.name, "input_size": list(size), "threads": threads, "batch": batch, **measured,
            "added_ms": cam - base, "added_percent": 100 * (cam - base) / base,
            "added_ms_median_of_rounds": float(np.median(added_rounds)),
            "added_percent_median_of_rounds": float(100 * np.median(added_rounds / base_rounds)),
            "cam_branch_inputs": {name: list(value.shape) for name, value in branch_feed.items()},
            "cam_branch_alone_percent": 100 * measured["cam_branch_alone"]["median_ms"] / base,
            # The same graph timed twice (only the fetched outputs differ): how far apart two equal engines land.
            "same_graph_difference_percent": float(100 * np.median(
                (np.array(measured["with_cam_probabilities_only"]["round_medians_ms"])
                 - np.array(measured["with_cam"]["round_medians_ms"])) / base_rounds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model package folder (default: the bundled one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per engine, over all rounds")
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--json", type=Path, default=Path("runs/cam_cost.json"))
    args = parser.parse_args()
    package = args.model or bundled_package_dir()
    results = [cam_cost(package / name, args.threads, args.batch, args.iterations, args.rounds)
               for name in (FP32_FILE, INT8_FILE) if (package / name).is_file()]
    print(f"cam cost, {package}, {cpu_name()}, {args.threads} thread(s), batch {args.batch}, {args.rounds} "
          "interleaved rounds")
    for r in results:
        print(f"{r['file']:20s} +{r['added_ms_median_of_rounds']:.3f} ms = +{r['added_percent_median_of_rounds']:.1f}% "
              f"(median over rounds); best rounds: without cam {r['without_cam']['median_ms']:.3f} ms, with cam "
              f"{r['with_cam']['median_ms']:.3f} ms, fetching only probabilities "
              f"{r['with_cam_probabilities_only']['median_ms']:.3f} ms; cam branch alone "
              f"{r['cam_branch_alone']['median_ms']:.3f} ms = {r['cam_branch_alone_percent']:.1f}%; the same graph "
              f"timed twice differs by {r['same_graph_difference_percent']:+.1f}%")
    print(f"results: {write_json({'package': str(package), 'processor': cpu_name(), 'results': results}, args.json)}")


if __name__ == "__main__":
    main()
