"""`pip install skinscan` without extras is the runtime only: a fresh venv with the wheel runs `predict` (with
`--explain`), `benchmark` and `app`, holds none of the factory's libraries, adds at most 200 MB of files, and a
factory verb there says which extra to install.

Slow (a wheel build and a venv install, a few minutes): `pytest -m "not lean"` leaves it out. pip resolves
numpy, Pillow, onnxruntime and tqdm the way scripts/setup.sh does, from whatever index pip is configured with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path
from typing import NamedTuple

import pytest

from skinscan.factory.data import METADATA_FILE

pytestmark = pytest.mark.lean

REPOSITORY = Path(__file__).resolve().parents[1]
FACTORY_DISTRIBUTIONS = ("torch", "torchvision", "onnx", "pandas", "scipy", "scikit-learn", "matplotlib",
                         "scikit-image")
MAX_MEGABYTES = 200  # issue 24: what `pip install skinscan` brings, onnxruntime, numpy and Pillow most of it
SITE_PACKAGES_CODE = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
DISTRIBUTIONS_CODE = ("import importlib.metadata as m, json; "
                      "print(json.dumps(sorted(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())))")


def run(command: list, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def megabytes(entries: list[Path], bytecode: bool) -> float:
    """Size of the files in these site-packages entries (files or folders), with or without __pycache__."""
    files: list[Path] = []
    for entry in entries:
        files += [entry] if entry.is_file() else [path for path in entry.rglob("*") if path.is_file()]
    return sum(path.stat().st_size for path in files if not path.is_symlink()
               and (bytecode or "__pycache__" not in path.parts)) / 1e6


class LeanVenv(NamedTuple):
    bin: Path                # the venv's bin/ folder
    site_packages: Path
    tooling: frozenset[str]  # site-packages entries the fresh venv had before the install (pip, setuptools)


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory) -> LeanVenv:
    """A fresh venv with the skinscan wheel installed, no extras, as a user would (`pip install skinscan`)."""
    work = tmp_path_factory.mktemp("lean")
    # Build from a clean copy: an in-tree build/ folder could carry modules deleted from src/ into the wheel.
    source = work / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "node_modules", "*.egg-info", "__pycache__", ".*_cache"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", work / "wheel", source], cwd=work)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((work / "wheel").glob("skinscan-*.whl"))
    venv.EnvBuilder(with_pip=True, clear=True).create(work / "venv")
    bin_dir = work / "venv" / "bin"
    site_packages = Path(run([bin_dir / "python", "-c", SITE_PACKAGES_CODE], cwd=work).stdout.strip())
    tooling = frozenset(path.name for path in site_packages.iterdir())
    installed = run([bin_dir / "python", "-m", "pip", "install", wheel], cwd=work)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return LeanVenv(bin_dir, site_packages, tooling)


def test_the_runtime_install_holds_no_factory_library_and_stays_small(lean_venv):
    listed = run([lean_venv.bin / "python", "-c", DISTRIBUTIONS_CODE], cwd=lean_venv.bin)
    assert listed.returncode == 0, listed.stderr
    distributions = json.loads(listed.stdout)
    names = {entry.split("==")[0].lower().replace("_", "-") for entry in distributions}
    assert {"skinscan", "numpy", "pillow", "onnxruntime", "tqdm"} <= names
    assert not names & set(FACTORY_DISTRIBUTIONS), f"factory libraries in the runtime install: {distributions}"

    # What the install put there: every entry the fresh venv did not have (its pip and setuptools are the venv's
    # tooling, there before skinscan), without the bytecode pip compiles on install (a cache Python can rebuild;
    # its size depends on the installer's flags and the Python version). All three numbers are printed.
    added = [path for path in lean_venv.site_packages.iterdir() if path.name not in lean_venv.tooling]
    files = megabytes(added, bytecode=False)
    with_bytecode = megabytes(added, bytecode=True)
    whole = megabytes(list(lean_venv.site_packages.iterdir()), bytecode=True)
    print(f"\nlean runtime install: {files:.1f} MB of installed files, {with_bytecode:.1f} MB with pip's bytecode; "
          f"the whole site-packages (+ the venv's pip, setuptools) {whole:.1f} MB\n{', '.join(distributions)}")
    assert files <= MAX_MEGABYTES, f"the runtime install is {files:.1f} MB (limit {MAX_MEGABYTES} MB)"


def test_predict_benchmark_and_app_run_in_the_runtime_install(lean_venv, ham10000_dir, tmp_path):
    image = tmp_path / "lesion.jpg"  # a real dermoscopic lesion: it passes the gate, so --explain draws its map
    first_melanoma = next(line.split(",")[1] for line in (ham10000_dir / METADATA_FILE).read_text().splitlines()
                          if ",mel," in line)
    shutil.copy(ham10000_dir / "images" / f"{first_melanoma}.jpg", image)

    predicted = run([lean_venv.bin / "skinscan", "predict", image, "--json", "--explain", tmp_path / "overlays"],
                    cwd=tmp_path, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    document = json.loads(predicted.stdout)
    assert len(document["predictions"]) == 1 and document["failures"] == []
    assert document["predictions"][0]["cannot_assess"] is None, document["predictions"][0]
    assert (tmp_path / "overlays" / "lesion.png").is_file()

    benchmarked = run([lean_venv.bin / "skinscan", "benchmark", "--threads", "1", "--iterations", "2", "--warmup", "0",
                       "--rounds", "1", "--json", tmp_path / "benchmark.json"], cwd=tmp_path, timeout=300)
    assert benchmarked.returncode == 0, benchmarked.stderr[-3000:]
    assert {row["engine"] for row in json.loads((tmp_path / "benchmark.json").read_text())["results"]} == {
        "onnx-fp32", "onnx-int8"}

    helped = run([lean_venv.bin / "skinscan", "app", "--help"], cwd=tmp_path, timeout=120)
    assert helped.returncode == 0 and "--port" in helped.stdout, helped.stderr
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    with subprocess.Popen([lean_venv.bin / "skinscan", "app", "--port", "0"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as server:
        try:
            url = re.search(r"http://\S+/", server.stdout.readline()).group(0)
            with urllib.request.urlopen(url, timeout=30) as page:  # 127.0.0.1 only: the server's loopback URL
                assert page.status == 200 and b"screening aid" in page.read().lower()
        finally:
            server.terminate()


@pytest.mark.parametrize(("argv", "extra"), [(["train"], "train"), (["data", "split"], "report")])
def test_a_factory_verb_in_the_runtime_install_names_its_extra(lean_venv, tmp_path, argv, extra):
    result = run([lean_venv.bin / "skinscan", *argv], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f'pip install "skinscan[{extra}]"' in result.stderr and "Traceback" not in result.stderr
