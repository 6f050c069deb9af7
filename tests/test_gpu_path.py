"""The GPU path of training, checked where no GPU is needed: `--compile` yields a checkpoint the exporter loads,
checkpoints saved through a compile wrapper load, the CPU fallbacks are no-ops, and the GPU throughput
benchmark runs end to end on the CPU. (On a GPU, run `benchmarks/gpu_train_throughput.py` itself.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")

from skinscan.factory.export import build_package  # noqa: E402
from skinscan.factory.model import create_model, model_from_checkpoint  # noqa: E402
from skinscan.factory.train import (  # noqa: E402
    TrainConfig,
    autocast,
    grad_scaler,
    load_checkpoint,
    load_model,
    to_device,
    train,
)
from skinscan.runtime.manifest import verify_file  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


def test_cpu_fallbacks_are_no_ops():
    cpu = torch.device("cpu")
    batch = torch.zeros(2, 3, dtype=torch.uint8)
    assert to_device(batch, cpu) is batch  # no pinning, no copy
    assert not grad_scaler(cpu).is_enabled()
    with autocast(cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_augmentation_keeps_every_tensor_on_the_batchs_device():
    """The augmentation parameters are drawn on the host; each must reach the batch's device. The meta device
    stands in for a GPU here (it has no data, but mixing it with CPU tensors fails as CUDA does)."""
    from skinscan.factory.augment import AugmentConfig, augment_batch

    images = torch.zeros(4, 32, 48, 3, dtype=torch.uint8, device="meta")
    out = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (4, 3, 32, 48)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert create_model("mobilenet_v3_small", num_classes=8).to("meta")(out).shape == (4, 8)


def test_state_dict_saved_through_a_compile_wrapper_loads():
    model = create_model("mobilenet_v3_small", num_classes=8).eval()
    wrapped = torch.compile(model)  # nothing is compiled until it is called: this only wraps
    keys = list(wrapped.state_dict())
    assert all(key.startswith("_orig_mod.") for key in keys)
    loaded = model_from_checkpoint({"model_config": model.config.to_json(), "model": wrapped.state_dict()})
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_compiled_training_yields_a_checkpoint_the_exporter_loads(ham10000_dir, split_csv, tmp_path):
    """`--compile` on the CPU with torch.compile's `eager` backend: dynamo traces the network (and re-traces
    it when the backbone unfreezes) without inductor's code generation, which takes minutes on 2 cores."""
    torch._dynamo.reset()
    config = TrainConfig(data_dir=str(ham10000_dir), split_csv=str(split_csv), out_dir=str(tmp_path / "run"),
                         pretrained=None, input_size=(64, 64), warmup_epochs=1, epochs=1, batch_size=8,
                         warmup_steps=2, max_images=21, threads=2, seed=0, compile="eager")
    best = train(config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really went through torch.compile
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] == "eager"
    for state in (checkpoint["model"], checkpoint["train_model"]):
        assert not any(key.startswith(("_orig_mod.", "module.")) for key in state)
    assert load_model(best) is not None
    build_package(best, ham10000_dir, split_csv, tmp_path / "package", threads=2)
    verify_file(tmp_path / "package", "skinscan.onnx")


def test_gpu_throughput_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_throughput.json"
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "gpu_train_throughput.py"), "--device", "cpu",
               "--size", "32", "32", "--batch", "4", "--steps", "2", "--chunk", "1", "--warmup", "1", "--rounds", "1",
               "--images", "8", "--threads", "1", "--configs", "channels_last", "autocast", "autocast+compile",
               "--compile-backend", "eager", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU present: measuring the CPU" in result.stdout
    assert f"results: {out}" in result.stdout
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["eager-fp32", "channels_last", "autocast", "autocast+compile"]
    assert report["results"]["eager-fp32"]["ratio_vs_eager_fp32"] == pytest.approx(1.0)
    table = result.stdout.splitlines()
    for name, measured in report["results"].items():
        assert measured["images_per_s"] > 0 and measured["ratio_vs_eager_fp32"] > 0, name
        assert any(line.startswith(f"{name} ") for line in table), name  # one table row per configuration
    assert report["device_type"] == "cpu" and report["autocast_dtype"] == "bfloat16"
