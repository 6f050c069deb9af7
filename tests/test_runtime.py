"""Tests of skinscan.runtime and `skinscan predict`: the package contract, integrity checks, input kinds,
batching, parity with torch, predict with torch blocked and the CLI's outputs and exit statuses. (The import
rule itself, no torch or factory in the runtime, is import-linter's contract in pyproject.toml.)"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import skinscan.runtime
from skinscan import DISCLAIMER
from skinscan.cli import main
from skinscan.labels import LABEL_CODES, MALIGNANT_CODES
from skinscan.runtime.classifier import (
    FP32_FILE,
    INT8_FILE,
    REQUIRED_METADATA,
    Classifier,
    ModelPackageError,
    Prediction,
    find_images,
)
from skinscan.runtime.manifest import MANIFEST, IntegrityError, write_manifest
from skinscan.runtime.preprocess import PreprocessConfig, preprocess

CONFIG = PreprocessConfig((96, 128), "center_crop")
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> SimpleNamespace:
    """A small, randomly initialised model package: skinscan.onnx + manifest.json (export needs torch)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from skinscan.factory.export import export_onnx, package_metadata
    from skinscan.factory.model import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small")
    # Fresh BatchNorm statistics make a random network's output nearly constant (std ~1e-9 across images),
    # which would let the equality tests below pass vacuously: re-estimate them on synthetic photos and
    # sharpen the head so that different images get clearly different probabilities.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        batch = np.stack([np.asarray(photo(seed, (128, 96))) for seed in range(32)])
        model(torch.from_numpy(batch).permute(0, 3, 1, 2).float())
        model.net.classifier[-1].weight.mul_(20)
    model.eval()
    folder = tmp_path_factory.mktemp("package")
    metadata = package_metadata(CONFIG, model.config.to_json(), 1.0, {"malignant": THRESHOLD})
    export_onnx(model, CONFIG, folder / FP32_FILE, metadata=metadata)
    write_manifest(folder)
    return SimpleNamespace(dir=folder, model=model)


@pytest.fixture(scope="module")
def classifier(package) -> Classifier:
    return Classifier.load(package.dir, threads=1)


def copy_package(package, destination: Path) -> Path:
    return Path(shutil.copytree(package.dir, destination))


def photo(seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A smooth synthetic RGB image (width, height): gradients plus a blob, different per seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 20)
    channels = [rng.uniform(60, 200) + rng.uniform(-60, 60) * x + rng.uniform(-80, 0) * blob * 2 for _ in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), "RGB")


def save(image: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


@pytest.fixture(scope="module")
def lesion_images(ham10000_dir) -> list[Path]:
    return sorted((ham10000_dir / "images").glob("*.jpg"))[:8]


# ---------------------------------------------------------------------------------------------- contract
def test_package_contract(classifier):
    session = classifier.session
    (image,) = session.get_inputs()
    assert image.name == "image" and image.type == "tensor(uint8)"
    assert not isinstance(image.shape[0], int) and image.shape[1:] == [96, 128, 3]  # dynamic batch, H, W, RGB
    assert [o.name for o in session.get_outputs()][:2] == ["probabilities", "logits"]
    metadata = session.get_modelmeta().custom_metadata_map
    for key in (*REQUIRED_METADATA, "skinscan.version", "skinscan.temperature", "skinscan.input"):
        assert key in metadata and json.loads(metadata[key]) is not None, key
    assert classifier.labels == LABEL_CODES and classifier.malignant_codes == MALIGNANT_CODES
    assert classifier.config == CONFIG and classifier.threshold == THRESHOLD and classifier.precision == "fp32"

    rng = np.random.default_rng(0)
    five = rng.integers(0, 256, (5, 96, 128, 3), dtype=np.uint8)
    for batch in (five[:1], five):
        probabilities = classifier.predict_arrays(batch)
        assert probabilities.shape == (len(batch), 7) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
        assert (probabilities >= 0).all()
    singles = np.concatenate([classifier.predict_arrays(five[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(classifier.predict_arrays(five), singles, atol=1e-5)
    assert classifier.predict_arrays(five[:0]).shape == (0, 7)
    photos = np.stack([np.asarray(photo(seed, (128, 96))) for seed in range(100, 108)])
    assert classifier.predict_arrays(photos).std(0).max() > 0.01  # the test model is input-sensitive


def test_predict_arrays_refuses_wrong_input(classifier):
    with pytest.raises(ValueError, match=r"\[N, 96, 128, 3\]"):
        classifier.predict_arrays(np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        classifier.predict_arrays(np.zeros((1, 96, 128, 3), np.float32))


# ------------------------------------------------------------------------------------------ classifying
def test_classify_gives_the_same_result_for_every_input_kind(classifier, tmp_path):
    image = photo(1)
    path = save(image, tmp_path / "lesion.png")
    results = {
        "path": classifier.classify(path),
        "str": classifier.classify(str(path)),
        "bytes": classifier.classify(path.read_bytes()),
        "pil": classifier.classify(Image.open(path)),
        "numpy": classifier.classify(np.asarray(image)),
    }
    reference = results["path"]
    for kind, prediction in results.items():
        np.testing.assert_allclose(list(prediction.probabilities.values()), list(reference.probabilities.values()),
                                   atol=1e-6, err_msg=kind)
        assert prediction.label == reference.label
    assert results["path"].source == str(path) and results["bytes"].source is None


def test_prediction_fields(classifier):
    prediction = classifier.classify(photo(2), source="mole.png")
    assert isinstance(prediction, Prediction) and prediction.source == "mole.png"
    assert list(prediction.probabilities) == list(LABEL_CODES)
    assert len(prediction.top) == 3
    codes = [code for code, _, _ in prediction.top]
    values = [p for _, _, p in prediction.top]
    assert values == sorted(values, reverse=True) and values[0] == max(prediction.probabilities.values())
    assert prediction.label == codes[0] and prediction.top[0][1] == classifier.label_names[codes[0]]
    assert prediction.malignant_probability == pytest.approx(sum(prediction.probabilities[c] for c in MALIGNANT_CODES))
    assert prediction.malignant == (prediction.malignant_probability >= THRESHOLD)
    document = json.loads(json.dumps(prediction.to_dict()))
    assert document["label"] == prediction.label and document["top"][0]["code"] == prediction.label
    assert document["malignant"] is prediction.malignant and len(document["probabilities"]) == 7


def test_batch_equals_singles(classifier, tmp_path):
    sizes = [(200, 150), (150, 200), (640, 480), (97, 130), (300, 300)]
    images = [photo(seed, size) for seed, size in enumerate(sizes)]
    images[2] = save(images[2], tmp_path / "big.jpg")  # mix paths in
    batch = classifier.classify_batch(images, batch_size=2)
    singles = [classifier.classify(image) for image in images]
    assert len(batch) == 5
    for b, s in zip(batch, singles, strict=True):
        np.testing.assert_allclose(list(b.probabilities.values()), list(s.probabilities.values()), atol=1e-5)
        assert b.source == s.source
    assert batch[2].source == str(images[2])


def test_onnx_runtime_matches_torch_on_real_lesions(package, classifier, lesion_images):
    from skinscan.factory.export import torch_probabilities

    arrays = np.stack([preprocess(path, CONFIG) for path in lesion_images])
    expected = torch_probabilities(package.model, arrays, 1.0)
    actual = classifier.predict_arrays(arrays)
    assert np.abs(actual - expected).max() <= 1e-4


# ---------------------------------------------------------------------------------------- loading rules
def test_tampered_model_is_refused(package, tmp_path):
    folder = copy_package(package, tmp_path / "tampered")
    data = bytearray((folder / FP32_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / FP32_FILE).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        Classifier.load(folder)
    with pytest.raises(IntegrityError, match="does not match"):
        Classifier.load(folder / FP32_FILE)


def test_package_without_manifest_is_refused(package, tmp_path):
    folder = copy_package(package, tmp_path / "no-manifest")
    (folder / MANIFEST).unlink()
    with pytest.raises(IntegrityError, match=MANIFEST):
        Classifier.load(folder)


def test_unlisted_model_file_is_refused(package, tmp_path):
    folder = copy_package(package, tmp_path / "unlisted")
    shutil.copy(folder / FP32_FILE, folder / INT8_FILE)  # present, but not in the manifest
    with pytest.raises(IntegrityError, match="not listed"):
        Classifier.load(folder, precision="auto")  # auto picks int8 when present


def test_precision_selection(package, tmp_path):
    folder = copy_package(package, tmp_path / "both")
    with pytest.raises(ModelPackageError, match=INT8_FILE):
        Classifier.load(folder, precision="int8")
    shutil.copy(folder / FP32_FILE, folder / INT8_FILE)  # stands in for a quantized graph
    write_manifest(folder)
    assert Classifier.load(folder, precision="auto", threads=1).path.name == INT8_FILE
    assert Classifier.load(folder, threads=1).path.name == FP32_FILE  # the default: what the web app runs
    assert Classifier.load(folder / INT8_FILE, threads=1).precision == "int8"  # a file is used as it is
    assert Classifier.load(folder, precision="int8", threads=1).precision == "int8"
    assert Classifier.load(folder, precision="fp32", threads=1).path.name == FP32_FILE
    assert Classifier.load(folder / FP32_FILE, threads=1).precision == "fp32"
    with pytest.raises(ModelPackageError, match="precision"):
        Classifier.load(folder / FP32_FILE, precision="int8")
    with pytest.raises(ValueError, match="unknown precision"):
        Classifier.load(folder, precision="fp16")
    (folder / FP32_FILE).unlink()
    write_manifest(folder)
    assert Classifier.load(folder, threads=1).precision == "int8"  # an INT8-only package still loads by default


def test_missing_paths_and_bundled_package(tmp_path, monkeypatch):
    with pytest.raises(ModelPackageError, match="no model package at"):
        Classifier.load(tmp_path / "nowhere")
    monkeypatch.setattr(skinscan.runtime.classifier, "bundled_package_dir", lambda: tmp_path / "models")
    with pytest.raises(ModelPackageError, match="no bundled model package in .*; pass --model"):
        Classifier.load()


def test_missing_metadata_key_is_named(package, tmp_path):
    import onnx

    folder = copy_package(package, tmp_path / "no-thresholds")
    graph = onnx.load(str(folder / FP32_FILE))
    kept = [p for p in graph.metadata_props if p.key != "skinscan.thresholds"]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, str(folder / FP32_FILE))
    write_manifest(folder)
    with pytest.raises(ModelPackageError, match="skinscan.thresholds"):
        Classifier.load(folder)


# ------------------------------------------------------------------------------------------ torch-free
def test_predict_runs_with_torch_blocked(package, tmp_path):
    image = save(photo(3), tmp_path / "lesion.png")
    code = ("import sys; sys.modules['torch'] = None; from skinscan.cli import main; "
            f"sys.exit(main(['predict', {str(image)!r}, '--model', {str(package.dir)!r}, '--json', '--threads', '1']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert len(document["predictions"]) == 1 and document["failures"] == []


# ------------------------------------------------------------------------------------------------- CLI
def test_find_images(tmp_path):
    save(photo(0), tmp_path / "b" / "two.PNG")
    save(photo(0), tmp_path / "a" / "one.jpg")
    save(photo(0), tmp_path / "a" / ".hidden" / "skip.jpg")
    save(photo(0), tmp_path / "a" / "._skip.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    images, not_found = find_images([tmp_path, tmp_path / "a" / "one.jpg", tmp_path / "missing.jpg"])
    assert images == [tmp_path / "a" / "one.jpg", tmp_path / "b" / "two.PNG"]  # sorted, deduplicated
    assert not_found == [(str(tmp_path / "missing.jpg"), "no such file or folder")]
    images, not_found = find_images([str(tmp_path / "**" / "*.jpg"), str(tmp_path / "*.webp")])
    assert images == [tmp_path / "a" / "one.jpg"] and not_found[0][0].endswith("*.webp")


@pytest.fixture
def mixed_folder(tmp_path, lesion_images) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in lesion_images[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "corrupt.jpg").write_bytes(lesion_images[2].read_bytes()[:3000])  # truncated JPEG
    (folder / "notes.jpg").write_text("this is a text file with an image's name")
    return folder


def test_predict_json(package, mixed_folder, capsys):
    status = main(["predict", str(mixed_folder), "--model", str(package.dir), "--json", "--threads", "1"])
    out, err = capsys.readouterr()
    assert status == 1
    document = json.loads(out)
    assert [Path(p["source"]).name for p in document["predictions"]] == sorted(
        p.name for p in mixed_folder.iterdir() if p.name.startswith("ISIC"))
    failures = {Path(f["source"]).name: f["error"] for f in document["failures"]}
    assert set(failures) == {"corrupt.jpg", "notes.jpg"} and all(failures.values())
    assert "not an image" in failures["notes.jpg"] and "corrupt" in failures["corrupt.jpg"]
    assert document["model"]["malignant_threshold"] == THRESHOLD
    assert DISCLAIMER in err and document["disclaimer"] == DISCLAIMER  # stdout is pure JSON (parsed above)
    assert "corrupt.jpg" in err and "notes.jpg" in err  # failures listed on stderr too


def test_predict_csv(package, tmp_path, capsys):
    for seed in range(3):
        save(photo(seed), tmp_path / f"photo{seed}.jpg")
    status = main(["predict", str(tmp_path), "--model", str(package.dir), "--csv", "--batch-size", "2",
                   "--threads", "1"])
    out, err = capsys.readouterr()
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["file"]).name for r in rows] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    for row in rows:
        assert sum(float(row[code]) for code in LABEL_CODES) == pytest.approx(1.0, abs=1e-4)
        assert row["malignant"] in ("true", "false") and row["label"] in LABEL_CODES
    assert DISCLAIMER in err and DISCLAIMER not in out


def test_predict_table(package, tmp_path, capsys):
    image = save(photo(4), tmp_path / "mole.png")
    assert main(["predict", str(image), "--model", str(package.dir), "--threads", "1"]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["FILE", "DIAGNOSIS", "2ND", "3RD"]
    assert lines[1].startswith(str(image)) and ("SUSPICIOUS: see a dermatologist" in lines[1] or lines[1].endswith("-"))
    assert DISCLAIMER in out


def test_predict_usage_errors(package, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for arguments in ([str(empty)], [str(tmp_path / "missing.jpg")], [str(tmp_path / "*.png")]):
        assert main(["predict", *arguments, "--model", str(package.dir)]) == 2
        assert "no images found" in capsys.readouterr().err

    image = save(photo(5), tmp_path / "mole.png")
    assert main(["predict", str(image), "--model", str(tmp_path / "no-package")]) == 2
    assert "no model package at" in capsys.readouterr().err

    tampered = copy_package(package, tmp_path / "tampered")
    with open(tampered / FP32_FILE, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert main(["predict", str(image), "--model", str(tampered)]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
