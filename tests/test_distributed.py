"""`skinscan train` under torchrun: 2 CPU processes on gloo against 1 process with the same global batch,
exact resume of a 2-process run, its checkpoint in the normal exporter, and distillation targets computed
once, sharded over the processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from skinscan.factory import distributed  # noqa: E402
from skinscan.factory import train as train_module  # noqa: E402
from skinscan.factory.export import build_package  # noqa: E402
from skinscan.factory.model import create_model  # noqa: E402
from skinscan.factory.train import SplitData, TrainConfig, load_checkpoint, save_checkpoint  # noqa: E402
from skinscan.runtime.manifest import verify_file  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="this torch build has no torch.distributed gloo backend")]

TINY = ["--input-size", "96", "128", "--warmup-epochs", "1", "--epochs", "2", "--batch-size", "16",
        "--max-images", "70", "--threads", "1", "--seed", "3"]


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_processes_match_one_process_with_the_same_global_batch(ham10000_dir, split_csv, pretrained_v3_small,
                                                                    tmp_path):
    common = ["train", "--data", str(ham10000_dir), "--split", str(split_csv), *TINY,
              "--pretrained", pretrained_v3_small or "none"]
    run([sys.executable, "-m", "skinscan.cli", *common, "--out", str(tmp_path / "one")])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "skinscan.cli", *common, "--out", str(tmp_path / "two")])

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [row["epoch"] for row in two] == [1, 2, 3]  # rank 0 alone writes: one line per epoch
    assert len((tmp_path / "two" / "log.txt").read_text().splitlines()) >= 4
    for a, b in zip(one, two, strict=True):
        # Same samples per step, different augmentation draws and per-process BatchNorm: close, not equal
        # (measured: train loss within 0.12, val AUC within 0.035, balanced accuracy within 0.03).
        assert abs(a["train_loss"] - b["train_loss"]) < 0.25, (a, b)
        assert abs(a["val_macro_auc"] - b["val_macro_auc"]) < 0.1, (a, b)
        assert abs(a["val_balanced_accuracy"] - b["val_balanced_accuracy"]) < 0.2, (a, b)
    assert two[-1]["train_loss"] < two[0]["train_loss"]  # it learns

    package = build_package(tmp_path / "two" / "best.pt", ham10000_dir, split_csv, tmp_path / "package", threads=2)
    verify_file(tmp_path / "package", "skinscan.onnx")
    assert package["skinscan.preprocess"]["size"] == [96, 128]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_environment(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives a process of a single-node run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _worker(rank: int, world_size: int, port: int, config: dict, resume: bool, stop_at_epoch: int) -> None:
    """One torchrun-like process: the environment torchrun would set, then the ordinary `train`."""
    _torchrun_environment(rank, world_size, port)
    if stop_at_epoch:
        original = train_module.train_one_epoch

        def interrupted(*args, **kwargs):
            if args[6] == stop_at_epoch:  # the epoch argument
                raise KeyboardInterrupt  # torch.multiprocessing treats it as a clean stop
            return original(*args, **kwargs)

        train_module.train_one_epoch = interrupted
    train_module.train(TrainConfig.from_json(config), resume=resume)


def spawn_training(config: TrainConfig, resume: bool = False, stop_at_epoch: int = 0) -> None:
    mp.spawn(_worker, args=(2, _free_port(), config.to_json(), resume, stop_at_epoch), nprocs=2, join=True)


def test_two_process_run_resumes_exactly(ham10000_dir, split_csv, tmp_path):
    def config(name):
        return TrainConfig(data_dir=str(ham10000_dir), split_csv=str(split_csv), out_dir=str(tmp_path / name),
                           pretrained=None, input_size=(96, 128), warmup_epochs=1, epochs=2, batch_size=16,
                           warmup_steps=4, max_images=70, threads=1, seed=3)

    spawn_training(config("straight"))
    spawn_training(config("resumed"), stop_at_epoch=3)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    spawn_training(config("resumed"), resume=True)

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 3
    for name, tensor in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert metrics(tmp_path / "resumed")[-1]["val_balanced_accuracy"] == pytest.approx(
        metrics(tmp_path / "straight")[-1]["val_balanced_accuracy"])


def test_single_process_context_is_a_no_op():
    context = distributed.SINGLE_PROCESS
    rows = np.arange(10)
    assert not context.enabled and context.is_main
    assert distributed.shard(context, rows) is rows
    assert distributed.gather_shards(context, rows, 10) is rows
    assert distributed.sum_over_processes(context, [1.0, 2.0]) == [1.0, 2.0]


def test_global_batch_must_split_evenly(ham10000_dir, split_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    config = TrainConfig(data_dir=str(ham10000_dir), split_csv=str(split_csv), out_dir=str(tmp_path), batch_size=16)
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        train_module.train(config)


def _teacher_worker(rank: int, world_size: int, port: int, config: dict, data_file: str, out_file: str) -> None:
    """One torchrun-like process asking for the distillation targets; records how many images it ran."""
    _torchrun_environment(rank, world_size, port)
    torch.set_num_threads(1)
    context = distributed.context_from_environment()
    device = distributed.start(context, torch.device("cpu"))
    seen = []
    original = train_module.predict_logits

    def counting(model, images, *args, **kwargs):
        seen.append(len(images))
        return original(model, images, *args, **kwargs)

    train_module.predict_logits = counting
    config = TrainConfig.from_json(config)
    logits = train_module.cached_teacher_logits(config, SplitData(**torch.load(data_file)), device,
                                                Path(config.out_dir), context)
    torch.save({"logits": logits, "seen": seen}, out_file.format(rank=rank))
    distributed.stop(context)


def test_teacher_logits_are_sharded_over_processes_and_cached_once(tmp_path):
    config = TrainConfig(data_dir="", split_csv="", out_dir=str(tmp_path / "run"), pretrained=None,
                         input_size=(64, 96), teachers=[str(tmp_path / "teacher.pt")])
    (tmp_path / "run").mkdir()
    teacher = create_model("mobilenet_v3_small", None).eval()
    save_checkpoint(train_module._export_state(teacher, config, {}), tmp_path / "teacher.pt")
    generator = torch.Generator().manual_seed(0)
    data = {"images": torch.randint(0, 256, (11, 64, 96, 3), dtype=torch.uint8, generator=generator),
            "labels": torch.arange(11) % 7, "image_ids": [f"img{i}" for i in range(11)]}
    torch.save(data, tmp_path / "data.pt")
    expected = train_module.teacher_logits(config, SplitData(**data), torch.device("cpu"))

    def spawn():
        out = str(tmp_path / "rank{rank}.pt")
        mp.spawn(_teacher_worker, args=(2, _free_port(), config.to_json(), str(tmp_path / "data.pt"), out),
                 nprocs=2, join=True)
        return [torch.load(out.format(rank=rank)) for rank in range(2)]

    first = spawn()
    assert sorted(result["seen"] for result in first) == [[5], [6]]  # each process ran its shard only
    for result in first:  # and every process got all 11 rows back, in order
        torch.testing.assert_close(result["logits"], expected, rtol=1e-4, atol=1e-4)
    cache = tmp_path / "run" / "teacher_logits.pt"
    written = cache.stat().st_mtime_ns
    second = spawn()  # a resumed run: both processes read the cache, none recomputes or rewrites it
    assert [result["seen"] for result in second] == [[], []]
    assert cache.stat().st_mtime_ns == written
    torch.testing.assert_close(second[0]["logits"], expected, rtol=1e-4, atol=1e-4)
