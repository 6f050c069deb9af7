"""Tests of `skinscan benchmark` (on a tiny model package) and of benchmarks/train_throughput.py (one step)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skinscan.cli import main
from skinscan.runtime.benchmark import compare_latency, interleaved_latency, measure_latency
from skinscan.runtime.classifier import FP32_FILE, INT8_FILE
from skinscan.runtime.manifest import write_manifest

REPOSITORY = Path(__file__).resolve().parents[1]
FAST = ["--iterations", "5", "--warmup", "1", "--rounds", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 64x64 package with only skinscan.onnx (+ manifest), and the checkpoint it was exported from."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from skinscan.factory.export import export_onnx, package_metadata
    from skinscan.factory.model import create_model
    from skinscan.runtime.preprocess import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small").eval()
    config = PreprocessConfig((64, 64), "center_crop")
    folder = tmp_path_factory.mktemp("tiny")
    package = folder / "package"
    export_onnx(model, config, package / FP32_FILE,
                metadata=package_metadata(config, model.config.to_json(), 1.0, {"malignant": 0.5}))
    write_manifest(package)
    checkpoint = folder / "best.pt"
    torch.save({"model_config": model.config.to_json(), "model": model.state_dict(),
                "preprocess": config.to_json()}, checkpoint)
    return package, checkpoint


def with_int8_copy(package: Path, destination: Path) -> Path:
    """The package plus a stand-in INT8 file (the FP32 graph under the INT8 name): enough to time both rows."""
    shutil.copytree(package, destination)
    shutil.copy(destination / FP32_FILE, destination / INT8_FILE)
    write_manifest(destination)
    return destination


def run_verb(arguments: list[str], capsys) -> tuple[int, str, str]:
    status = main(["benchmark", *arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_measure_latency_counts_calls_and_reports_positive_numbers():
    calls = []
    result = measure_latency(lambda: calls.append(1), iterations=7, warmup=3, batch_size=4)
    assert len(calls) == 10
    assert set(result) == {"median_ms", "p90_ms", "images_per_s"}
    assert 0 < result["median_ms"] <= result["p90_ms"] and result["images_per_s"] > 0
    with pytest.raises(ValueError):
        measure_latency(lambda: None, iterations=0)


def test_interleaved_latency_takes_turns_call_by_call_and_keeps_every_round():
    order = []
    measured = interleaved_latency({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                   iterations=4, warmup=1, rounds=2)
    # Warm-up, then call by call with the order rotating each step: round 1 (a b, b a), round 2 (b a, a b).
    assert order == ["a", "b"] + ["a", "b", "b", "a"] + ["b", "a", "a", "b"]
    for result in measured.values():
        assert len(result["round_medians_ms"]) == 2 and result["iterations"] == 4
        assert result["median_ms"] == min(result["round_medians_ms"])


def test_benchmark_verb_measures_every_engine_and_writes_json(tiny, tmp_path, capsys):
    package, checkpoint = tiny
    package = with_int8_copy(package, tmp_path / "package")
    out = tmp_path / "bench.json"
    status, stdout, _ = run_verb(["--model", str(package), "--checkpoint", str(checkpoint), "--threads", "1",
                                  "--batch", "1", "2", *FAST, "--json", str(out)], capsys)
    assert status == 0
    assert f"results: {out}" in stdout
    for engine in ("pytorch-eager", "onnx-fp32", "onnx-int8", "INT8 vs FP32 speed-up"):
        assert engine in stdout

    report = json.loads(out.read_text())
    assert {"skinscan_version", "machine", "model", "settings", "files", "results", "speedups", "notes"} <= set(report)
    assert report["model"]["input_size"] == [64, 64]
    assert report["settings"]["threads"] == [1] and report["settings"]["batch"] == [1, 2]
    assert {(r["engine"], r["batch"]) for r in report["results"]} == {
        (engine, batch) for engine in ("pytorch-eager", "onnx-fp32", "onnx-int8") for batch in (1, 2)}
    for row in report["results"]:
        assert row["threads"] == 1
        assert row["median_ms"] > 0 and row["p90_ms"] > 0 and row["images_per_s"] > 0
    assert set(report["files"]) == {"pytorch-eager", "onnx-fp32", "onnx-int8"}
    assert all(f["megabytes"] > 0 for f in report["files"].values())
    assert len(report["speedups"]) == 2
    for row in report["speedups"]:
        assert row["int8_vs_fp32"] > 0 and row["fp32_vs_eager"] > 0 and row["int8_vs_eager"] > 0


def test_benchmark_verb_skips_missing_int8_and_eager_with_a_note(tiny, tmp_path, capsys):
    package, _ = tiny
    out = tmp_path / "bench.json"
    status, stdout, _ = run_verb(["--model", str(package), "--threads", "1", *FAST, "--json", str(out)], capsys)
    assert status == 0
    report = json.loads(out.read_text())
    assert [r["engine"] for r in report["results"]] == ["onnx-fp32"]
    assert report["speedups"] == [{"threads": 1, "batch": 1}]
    notes = " ".join(report["notes"])
    assert INT8_FILE in notes and "--checkpoint" in notes
    assert "note: onnx-int8 skipped" in stdout


def test_benchmark_verb_refuses_a_tampered_file_and_an_empty_folder(tiny, tmp_path, capsys):
    package, _ = tiny
    tampered = Path(shutil.copytree(package, tmp_path / "tampered"))
    with open(tampered / FP32_FILE, "ab") as f:
        f.write(b"\0")
    status, _, stderr = run_verb(["--model", str(tampered), *FAST, "--json", str(tmp_path / "x.json")], capsys)
    assert status == 2 and "does not match its manifest" in stderr
    (tmp_path / "empty").mkdir()
    status, _, stderr = run_verb(["--model", str(tmp_path / "empty"), *FAST, "--json", str(tmp_path / "x.json")],
                                 capsys)
    assert status == 2 and "nothing to benchmark" in stderr
    assert not (tmp_path / "x.json").exists()


def test_compare_latency_reports_the_int8_speedup(tiny, tmp_path):
    package = with_int8_copy(tiny[0], tmp_path / "package")
    images = np.zeros((1, 64, 64, 3), np.uint8)
    result = compare_latency({"fp32": package / FP32_FILE, "int8": package / INT8_FILE}, images, iterations=4,
                             warmup=1, rounds=2)
    assert result["threads"] == 1 and result["batch"] == 1
    assert result["fp32"]["median_ms"] > 0 and result["int8"]["median_ms"] > 0
    assert result["int8_vs_fp32"] == pytest.approx(result["fp32"]["median_ms"] / result["int8"]["median_ms"])


def test_train_throughput_script_runs_both_pipelines(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    out = tmp_path / "throughput.json"
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "train_throughput.py"), "--steps", "1", "--batch", "4",
               "--size", "64", "64", "--warmup", "0", "--images", "8", "--threads", "1", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skinscan" in result.stdout and "baseline" in result.stdout
    assert "train step" in result.stdout and "augmentation alone" in result.stdout
    assert f"results: {out}" in result.stdout
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"train_step", "feature_extraction", "augmentation"}
    for measure in report["results"].values():
        assert measure["skinscan"]["images_per_s"] > 0 and measure["baseline"]["images_per_s"] > 0
        assert measure["ratio"] > 0
    assert report["images"].startswith(("real", "random"))


def test_int8_variants_timing_reports_the_graphs_it_can_build(ham10000_dir, split_csv, tmp_path):
    """On the bundled package (colour constancy in front of the stem) the all-INT8 variant is refused by the
    quantizer: the script says why and times the graphs it has (here also a variant with 7 float blocks), each
    against its FP32, with the baseline's rows; `--score val` adds each graph's accuracy on val images."""
    out = tmp_path / "timing.json"
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "int8_variants_timing.py"), "--iterations", "3",
               "--data", str(ham10000_dir), "--split", str(split_csv), "--json", str(out),
               "--baseline", str(REPOSITORY / "src" / "skinscan" / "models"),
               "--float-blocks", "0", "7", "--score", "val", "--score-images", "40"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no all-INT8 variant of this package:" in result.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"fp32", "int8 (shipped)", "int8 (float blocks 7)", "baseline fp32", "baseline int8"}
    assert report["fp32"]["fp32_over_this"] == 1.0 and report["baseline fp32"]["fp32_over_this"] == 1.0
    assert all(row["median_ms"] > 0 and row["p20_ms"] > 0 for row in report.values())
    assert report["fp32"]["val_top1_agreement_with_fp32"] == 1.0
    for name in ("int8 (shipped)", "int8 (float blocks 7)"):
        assert 0.5 < report[name]["val_top1_agreement_with_fp32"] <= 1.0
        assert 0.3 < report[name]["val_balanced_accuracy"] <= 1.0 and 0.5 < report[name]["val_macro_auc"] <= 1.0
    assert "val_balanced_accuracy" not in report["baseline int8"]  # scored: this package's graphs only
