"""Privacy: inference never touches the network, and the data and training commands write only into the
output folders they are given."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skinscan.factory.data import image_paths, read_metadata

# Runs before the command: every outbound connection and DNS lookup raises (and is recorded on stderr).
NO_NETWORK = """
import socket, sys
def refuse(*args, **kwargs):
    sys.stderr.write(f"NETWORK ATTEMPT {args!r}\\n")
    raise OSError("network access is blocked in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def run_offline(args: list[str], cwd: Path, env: dict | None = None, unset: tuple[str, ...] = ()
                ) -> subprocess.CompletedProcess:
    """`skinscan ARGS` in a subprocess with the network blocked; `env` added to ours, `unset` names removed."""
    code = NO_NETWORK + "from skinscan.cli import main; sys.exit(main(sys.argv[1:]))"
    inherited = {key: value for key, value in os.environ.items() if key not in unset}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env={**inherited, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def lesion_files(ham10000_dir):
    metadata = read_metadata(ham10000_dir)
    return image_paths(ham10000_dir, list(metadata.image_id[:3]))


def test_the_network_block_works(tmp_path):
    result = run_offline(["data", "download", "--out", str(tmp_path / "d")], tmp_path)
    assert result.returncode != 0 and "NETWORK ATTEMPT" in result.stderr  # the guard really bites


def test_predict_with_the_bundled_model_never_uses_the_network(lesion_files, tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    result = run_offline(["predict", *map(str, lesion_files), "--json"], work, env, unset=("ORT_DISABLE_TELEMETRY",))
    assert result.returncode == 0, result.stderr
    assert "NETWORK ATTEMPT" not in result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 3
    assert snapshot(work) == set()  # and leaves nothing behind,
    # not even ONNX Runtime's telemetry device id (~/.cache/Microsoft/DeveloperTools: its C++ side is out of
    # the Python socket guard's reach, so skinscan turns it off before onnxruntime loads).
    assert snapshot(home) == set()


def test_onnx_runtime_telemetry_is_off_whenever_skinscan_is_imported():
    code = ("import os; os.environ.pop('ORT_DISABLE_TELEMETRY', None); import skinscan.runtime, onnxruntime; "
            "print(os.environ['ORT_DISABLE_TELEMETRY'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_data_commands_write_only_their_output(ham10000_dir, tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    data_before = snapshot(ham10000_dir)
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    assert run_offline(["data", "validate", "--data", str(ham10000_dir)], work, env).returncode == 0
    result = run_offline(["data", "split", "--data", str(ham10000_dir), "--out", "out/split.csv"], work, env)
    assert result.returncode == 0, result.stderr
    assert snapshot(work) == {"out", "out/split.csv"}
    assert snapshot(home) == set()
    assert snapshot(ham10000_dir) == data_before  # the data set is read, never written


@pytest.mark.slow
def test_training_writes_only_its_run_folder(ham10000_dir, pretrained_v3_small, tmp_path):
    pytest.importorskip("torch", reason="training needs the `train` extra (torch)")
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "TORCH_HOME": str(home / ".torch")}
    assert run_offline(["data", "split", "--data", str(ham10000_dir), "--out", "split.csv"], work, env).returncode == 0
    result = run_offline(["train", "--data", str(ham10000_dir), "--split", "split.csv", "--out", "run",
                          "--pretrained", pretrained_v3_small or "none", "--input-size", "64", "96",
                          "--warmup-epochs", "1", "--epochs", "0", "--max-images", "28", "--batch-size", "8"],
                         work, env)
    assert result.returncode == 0, result.stderr
    assert "NETWORK ATTEMPT" not in result.stderr
    assert {path.split("/")[0] for path in snapshot(work)} == {"split.csv", "run"}
    assert snapshot(home) == set()
