"""Tests of the model package shipped in the wheel (`src/skinscan/models/`): complete, intact, within its
size budget, usable by `skinscan predict` with no arguments beyond the image and no torch, and really the
trained model (it classifies real lesions from our own held-out test split well, and INT8 agrees with FP32).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from skinscan.factory.data import image_paths, lesion_grouped_split, read_metadata
from skinscan.labels import LABEL_CODES
from skinscan.runtime.classifier import FP32_FILE, INT8_FILE, Classifier, bundled_package_dir
from skinscan.runtime.manifest import read_manifest, sha256_file

SHIPPED_FILES = (FP32_FILE, INT8_FILE, "skinscan-int8.ort", "skinscan-int8.required_operators.config",
                 "quantization.json", "gate.json", "MODEL_CARD.md")


def test_bundled_package_is_complete_and_intact():
    package_dir = bundled_package_dir()
    manifest = read_manifest(package_dir)
    for name in SHIPPED_FILES:
        assert name in manifest["files"], f"{name} missing from the bundled manifest"
        assert sha256_file(package_dir / name) == manifest["files"][name]["sha256"], f"{name} differs from manifest"
    assert (package_dir / INT8_FILE).stat().st_size <= 2 * 1024 * 1024, "the INT8 model must stay within 2 MB"
    card = (package_dir / "MODEL_CARD.md").read_text()
    for needed in ("not a diagnosis", "CC BY-NC-SA 4.0", "scripts/reproduce.sh", "Balanced accuracy",
                   "Limitations and safety", "cannot assess", "non-lesion images turned away", "Known failure modes",
                   "Results by subgroup", "Hostile inputs", "ECE", "surgical ink"):
        assert needed.lower() in card.lower(), f"model card lacks {needed!r}"
    assert "RESULTS_TABLE" not in card and "TODO" not in card  # no unfilled placeholders


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundled_model_follows_the_contract(precision):
    classifier = Classifier.load(precision=precision, threads=1)
    assert classifier.precision == precision
    assert classifier.has_assess, "the bundled model must answer 'cannot assess' (the `assess` output)"
    assert list(classifier.labels) == list(LABEL_CODES)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundled_model_has_the_explanation_output(precision):
    """Both files output `cam` (Grad-CAM of the top class, float [N, h, w] with h, w the input size after the
    network's five stride-2 stages: [8, 11] for a 252x336 input, [7, 9] for 210x280)."""
    classifier = Classifier.load(precision=precision, threads=1)
    cam = next((o for o in classifier.session.get_outputs() if o.name == "cam"), None)
    assert classifier.has_cam and cam is not None, "re-export the bundled package: it has no `cam` output"
    expected = [_after_strides(side) for side in classifier.metadata["skinscan.preprocess"]["size"]]
    assert cam.type == "tensor(float)" and cam.shape[1:] == expected
    assert "cam" in classifier.metadata["skinscan.outputs"]


def _after_strides(side: int, stages: int = 5) -> int:
    """A side's length after `stages` stride-2 convolutions with padding (each rounds up)."""
    for _ in range(stages):
        side = -(-side // 2)
    return side


@pytest.fixture(scope="module")
def held_out_lesions(ham10000_dir):
    """Up to 300 images of our own lesion-disjoint test split (seed 0, as scripts/reproduce.sh uses)."""
    metadata = read_metadata(ham10000_dir)
    split = lesion_grouped_split(metadata, seed=0)
    test = split[split.split == "test"].sample(n=min(300, int((split.split == "test").sum())), random_state=0)
    return image_paths(ham10000_dir, list(test.image_id)), np.array([LABEL_CODES.index(d) for d in test.dx])


def test_bundled_model_classifies_held_out_lesions(held_out_lesions):
    paths, labels = held_out_lesions
    probabilities = {}
    for precision in ("fp32", "int8"):
        classifier = Classifier.load(precision=precision, threads=2)
        predictions = classifier.classify_batch(paths, batch_size=32)
        probabilities[precision] = np.array([[p.probabilities[c] for c in LABEL_CODES] for p in predictions])
    fp32_top, int8_top = probabilities["fp32"].argmax(1), probabilities["int8"].argmax(1)
    # A random or wrongly bundled model scores ~0.15-0.6 here; the trained one ~0.8 (nv dominates the sample).
    assert (fp32_top == labels).mean() >= 0.70
    assert (int8_top == labels).mean() >= 0.70
    assert (fp32_top == int8_top).mean() >= 0.85
    np.testing.assert_allclose(probabilities["int8"].sum(1), 1.0, atol=1e-3)


def test_bundled_int8_maps_follow_fp32(held_out_lesions):
    """Where both precisions predict the same class, the INT8 map resembles the FP32 one (which is exact
    Grad-CAM: tests/test_explain.py). They differ because the INT8 network's last feature map does (median
    correlation 0.82 on these 300 images; 0.84 on the whole test split, 0.94 for mel, 0.76 for nv)."""
    paths, _ = held_out_lesions
    labels, maps = {}, {}
    for precision in ("fp32", "int8"):
        predictions = Classifier.load(precision=precision, threads=2).classify_batch(paths, batch_size=32)
        labels[precision] = np.array([p.label for p in predictions])
        maps[precision] = np.stack([p.cam for p in predictions])
    assert np.isfinite(maps["int8"]).all() and maps["int8"].min() >= 0 and maps["int8"].max() <= 1 + 1e-6
    same = labels["fp32"] == labels["int8"]
    correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps["fp32"][same], maps["int8"][same],
                                                                          strict=True)]
    assert np.median(correlations) >= 0.75 and np.mean(correlations) >= 0.7


def test_predict_uses_the_bundled_model_without_torch(held_out_lesions):
    paths, _ = held_out_lesions
    code = ("import sys; sys.modules['torch'] = None; from skinscan.cli import main; "
            f"sys.exit(main(['predict', {str(paths[0])!r}, '--json']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["failures"] == [] and len(document["predictions"]) == 1
    assert document["predictions"][0]["top"][0]["code"] in LABEL_CODES


def test_model_card_says_what_the_graph_does_to_the_pixels():
    """An embedder who normalises or colour-corrects a second time gets wrong answers: the card must say which."""
    classifier = Classifier.load(precision="fp32", threads=1)
    card = (bundled_package_dir() / "MODEL_CARD.md").read_text()
    has_colour_constancy = classifier.metadata["skinscan.model"].get("color_constancy") == "shades_of_gray"
    assert ("Shades-of-Gray colour constancy" in card) == has_colour_constancy
    assert "normalisation inside the graph" in card
