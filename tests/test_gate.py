"""The "cannot assess" gate: the rule (skinscan.runtime.assess), the scores in the graph
(skinscan.factory.gate), thresholds chosen on validation, the INT8 graph, the runtime and CLI answers, and the
bundled package's measured rates."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from skinscan.runtime.assess import MESSAGES, PRECEDENCE, AssessSpec, AssessSpecError, choose_thresholds
from skinscan.runtime.classifier import Classifier, bundled_package_dir

SPEC = {
    "scores": ["lesion_distance", "sharpness", "brightness", "colourfulness"],
    "min_side": 100,
    "checks": [
        {"score": "brightness", "below": 100.0, "reason": "too_dark"},
        {"score": "brightness", "above": 200.0, "reason": "too_bright"},
        {"score": "sharpness", "below": 3.0, "reason": "too_blurry"},
        {"score": "colourfulness", "below": 9.0, "reason": "not_a_lesion"},
        {"score": "lesion_distance", "above": 11.0, "reason": "not_a_lesion"},
    ],
}
GOOD = [5.0, 10.0, 150.0, 30.0]  # distance, sharpness, brightness, colourfulness


# ------------------------------------------------------------------------------------------ the rule
def test_an_image_inside_every_threshold_is_assessable():
    verdict = AssessSpec.from_metadata(SPEC).judge(GOOD, (600, 450))
    assert verdict.assessable and verdict.reason is None and verdict.message is None
    assert verdict.scores == dict(zip(SPEC["scores"], GOOD, strict=True))


PRECEDENCE_CASES = [  # (scores, size, the answer): every check is evaluated, the highest-precedence failure wins
    (GOOD, (99, 450), "too_small"),
    ([50.0, 0.1, 20.0, 0.0], (99, 450), "not_a_lesion"),  # a tiny portrait: not a lesion photo, whatever its size
    ([5.0, 0.1, 20.0, 30.0], (99, 450), "too_small"),  # a lesion photo: too small before blurry and dark
    ([5.0, 10.0, 99.0, 30.0], (600, 450), "too_dark"),
    ([5.0, 0.1, 99.0, 30.0], (600, 450), "too_blurry"),  # blurry before dark: more light will not sharpen it
    ([5.0, 10.0, 201.0, 30.0], (600, 450), "too_bright"),
    ([5.0, 2.0, 150.0, 30.0], (600, 450), "too_blurry"),
    ([5.0, 10.0, 150.0, 1.0], (600, 450), "not_a_lesion"),
    ([12.0, 10.0, 150.0, 30.0], (600, 450), "not_a_lesion"),
    ([90.0, 10.0, 60.0, 30.0], (600, 450), "not_a_lesion"),  # a normally lit portrait: not "add light" (issue 25)
    ([90.0, 1.0, 250.0, 30.0], (600, 450), "not_a_lesion"),  # ... nor "blurry" or "overexposed"
    ([math.nan, 10.0, 150.0, 30.0], (600, 450), "not_a_lesion"),  # unmeasurable never passes
]


@pytest.mark.parametrize(("scores", "size", "reason"), PRECEDENCE_CASES)
def test_the_highest_precedence_failure_is_the_answer(scores, size, reason):
    verdict = AssessSpec.from_metadata(SPEC).judge(scores, size)
    assert verdict.reason == reason and verdict.message == MESSAGES[reason] and not verdict.assessable


def test_precedence_is_data_in_the_package():
    assert PRECEDENCE[:2] == ("not_a_lesion", "not_dermoscopic") and PRECEDENCE[-1] == "too_bright"
    assert set(PRECEDENCE) <= set(MESSAGES) and "dermatoscope" in MESSAGES["not_dermoscopic"]
    dark_and_blurry = [5.0, 0.1, 99.0, 30.0]
    assert AssessSpec.from_metadata(SPEC).judge(dark_and_blurry, (600, 450)).reason == "too_blurry"
    darkness_first = {**SPEC, "precedence": ["too_dark", "too_blurry"]}
    assert AssessSpec.from_metadata(darkness_first).judge(dark_and_blurry, (600, 450)).reason == "too_dark"
    unlisted = {**SPEC, "precedence": ["too_small"]}  # reasons it does not list: in check order, after it
    assert AssessSpec.from_metadata(unlisted).judge(dark_and_blurry, (99, 450)).reason == "too_small"
    assert AssessSpec.from_metadata(unlisted).judge(dark_and_blurry, (600, 450)).reason == "too_dark"
    with pytest.raises(AssessSpecError, match="precedence"):
        AssessSpec.from_metadata({**SPEC, "precedence": "too_dark"})
    spec = choose_thresholds(np.random.default_rng(0).normal(50, 10, (400, 4)))
    assert spec["precedence"] == list(PRECEDENCE)


def test_the_app_judges_like_python(tmp_path):
    """tests/browser/assess_cases.mjs runs the app's assess.js (what the page imports) on the same scores."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; run `bash scripts/setup_browser.sh`")
    exported = {**SPEC, "messages": MESSAGES}  # packages carry their messages (choose_thresholds writes them)
    specs = [exported, {**exported, "precedence": ["too_dark", "too_blurry"]},
             {**exported, "messages": {**MESSAGES, "too_dark": "dim"}}]
    extra = [(GOOD, (600, 450)), ([5.0, 0.1, 99.0, 30.0], (600, 450)), ([90.0, 0.1, 99.0, 1.0], (99, 450))]
    cases = [(spec, scores, size) for spec in specs for scores, size, _ in PRECEDENCE_CASES]
    cases += [(spec, scores, size) for spec in specs for scores, size in extra]
    document = [{"spec": spec, "scores": [None if math.isnan(s) else s for s in scores], "width": size[0],
                 "height": size[1]} for spec, scores, size in cases]
    (tmp_path / "cases.json").write_text(json.dumps(document))
    script = Path(__file__).parent / "browser" / "assess_cases.mjs"
    result = subprocess.run([node, str(script), str(tmp_path / "cases.json")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["precedence"] == list(PRECEDENCE)
    for (spec, scores, size), browser in zip(cases, output["verdicts"], strict=True):
        python = AssessSpec.from_metadata(spec).judge(scores, size)
        assert (browser["reason"], browser["message"]) == (python.reason, python.message), (spec, scores, size)


def test_everyday_photos_are_not_a_lesion_photo_before_they_are_too_dark():
    """Issue 25: normally lit everyday photos were told "too dark; add light" because brightness was checked first.
    scikit-image's rocket and coffee cross the bundled gate's brightness line (learned from dermoscopy) and its
    lesion-distance line: the answer must be the one the user can act on, "not a lesion photo"."""
    data = pytest.importorskip("skimage.data", reason="the everyday photos are scikit-image's samples (`dev` extra)")
    classifier = Classifier.load(threads=1)
    if not classifier.has_assess:
        pytest.skip("the bundled package predates the gate")
    for name in ("rocket", "coffee", "astronaut"):
        prediction = classifier.classify(getattr(data, name)())
        assert prediction.cannot_assess == "not_a_lesion", (name, prediction.assessment)


def test_unknown_size_skips_only_the_size_check():
    spec = AssessSpec.from_metadata(SPEC)
    assert spec.judge(GOOD, None).assessable
    assert spec.judge([5.0, 2.0, 150.0, 30.0], None).reason == "too_blurry"


@pytest.mark.parametrize("broken", [
    {},
    {"scores": ["a"], "checks": [{"score": "b", "below": 1, "reason": "x"}]},
    {"scores": ["a"], "checks": [{"score": "a", "reason": "x"}]},
    {"scores": ["a"], "checks": [{"score": "a", "below": 1, "above": 2, "reason": "x"}]},
    {"scores": ["a"], "checks": [{"score": "a", "below": "dark", "reason": "x"}]},
    {"scores": ["a"], "checks": "nope"},
])
def test_malformed_specs_are_refused_with_a_message(broken):
    with pytest.raises(AssessSpecError, match="skinscan.assess|check"):
        AssessSpec.from_metadata(broken)


# ----------------------------------------------------------------------------------- thresholds on val
def test_thresholds_keep_the_rejection_budget_on_validation():
    from skinscan.runtime.assess import SCORES, choose_thresholds

    rng = np.random.default_rng(0)
    scores = np.column_stack([rng.chisquare(80, 2000) / 80, rng.lognormal(2, 1, 2000), rng.normal(155, 20, 2000),
                              rng.normal(30, 8, 2000)])
    spec = choose_thresholds(scores, budget=0.02, tail=0.0025)
    judge = AssessSpec.from_metadata(spec)
    rejected = np.mean([not judge.judge(row).assessable for row in scores])
    assert rejected == pytest.approx(spec["val_rejected"])
    assert 0.015 <= rejected <= 0.02
    assert [c["score"] for c in spec["checks"]][-1] == "lesion_distance" and spec["scores"] == list(SCORES)
    for check in spec["checks"][:-1]:  # each quality check alone takes its 0.25% tail
        alone = AssessSpec.from_metadata({**spec, "checks": [check]})
        assert np.mean([not alone.judge(row).assessable for row in scores]) <= 0.003


# --------------------------------------------------------------------------------- the scores in the graph
@pytest.fixture(scope="module")
def gated_package(tmp_path_factory, pretrained_v3_small, ham10000_dir, split_csv):
    """An ImageNet-backbone package with the gate fitted on 140 train images: the real export path, small."""
    torch = pytest.importorskip("torch", reason="exporting needs the `train` extra")
    from skinscan.factory.data import load_split_images
    from skinscan.factory.export import PackagedModel, export_onnx, fit_gate, package_metadata, packaged_outputs
    from skinscan.factory.model import create_model
    from skinscan.runtime.assess import choose_thresholds
    from skinscan.runtime.manifest import write_manifest
    from skinscan.runtime.preprocess import PreprocessConfig

    config = PreprocessConfig((210, 280), "center_crop")
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", pretrained=pretrained_v3_small).eval()
    train, _, _ = load_split_images(ham10000_dir, split_csv, "train", config, max_images=140)
    val, _, _ = load_split_images(ham10000_dir, split_csv, "val", config, max_images=70)
    gate = fit_gate(model, torch.from_numpy(train))
    wrapped = PackagedModel(model, 1.0, cam=True, gate=gate).eval()
    torch_outputs = packaged_outputs(wrapped, torch.from_numpy(val))
    spec = choose_thresholds(torch_outputs["assess"])
    folder = tmp_path_factory.mktemp("gated")
    metadata = package_metadata(config, model.config.to_json(), 1.0, {"malignant": 0.3}, {"skinscan.assess": spec})
    export_onnx(model, config, folder / "skinscan.onnx", 1.0, metadata, cam=True, gate=gate)
    write_manifest(folder)
    return {"folder": folder, "val": val, "torch": torch_outputs, "spec": spec, "model": model}


def test_onnx_scores_equal_pytorch_and_the_numpy_definitions(gated_package):
    from scipy.ndimage import convolve

    classifier = Classifier.load(gated_package["folder"], precision="fp32")
    assert classifier.has_assess and classifier.has_cam
    val = gated_package["val"]
    outputs = classifier.run_arrays(val)
    np.testing.assert_allclose(outputs["assess"], gated_package["torch"]["assess"], rtol=2e-4, atol=1e-3)
    # The quality scores, recomputed independently with numpy/scipy from their textbook definitions.
    pixels = val.astype(np.float64)
    luma = pixels @ [0.299, 0.587, 0.114]
    laplacian = np.stack([convolve(image, [[0, 1, 0], [1, -4, 1], [0, 1, 0]])[1:-1, 1:-1] for image in luma])
    rg = pixels[..., 0] - pixels[..., 1]
    yb = 0.5 * (pixels[..., 0] + pixels[..., 1]) - pixels[..., 2]
    colourfulness = (np.sqrt(rg.var((1, 2)) + yb.var((1, 2)))
                     + 0.3 * np.sqrt(rg.mean((1, 2)) ** 2 + yb.mean((1, 2)) ** 2))
    np.testing.assert_allclose(outputs["assess"][:, 1], laplacian.var((1, 2)), rtol=1e-3)
    np.testing.assert_allclose(outputs["assess"][:, 2], luma.mean((1, 2)), rtol=1e-4)
    np.testing.assert_allclose(outputs["assess"][:, 3], colourfulness, rtol=1e-4)
    # The distance is scaled by the training median: lesions sit near 2 (one per gate block), not at 0 or 1000.
    assert 0.5 < np.median(outputs["assess"][:, 0]) < 10


def test_the_gate_leaves_the_classifier_unchanged(gated_package):
    from skinscan.factory.export import PackagedModel, packaged_outputs

    torch = pytest.importorskip("torch")
    plain = packaged_outputs(PackagedModel(gated_package["model"], 1.0).eval(), torch.from_numpy(gated_package["val"]))
    gated = Classifier.load(gated_package["folder"], precision="fp32").predict_arrays(gated_package["val"])
    np.testing.assert_allclose(gated, plain["probabilities"], atol=1e-5)


def test_int8_keeps_the_gate_float_and_close(gated_package, ham10000_dir, split_csv, tmp_path):
    import onnx

    from skinscan.factory.data import load_split_images
    from skinscan.factory.quantize import gate_only_nodes, quantize_package_model, refit_gate_thresholds, session
    from skinscan.runtime.preprocess import PreprocessConfig

    folder = gated_package["folder"]
    calibration, _, _ = load_split_images(ham10000_dir, split_csv, "train", PreprocessConfig((210, 280)),
                                          max_images=28, seed=1)
    int8 = tmp_path / "skinscan-int8.onnx"
    report = quantize_package_model(folder / "skinscan.onnx", int8, calibration)
    assert report["gate_float_nodes"] > 10
    model = onnx.load(str(int8))
    gate_ops = {node.op_type for node in gate_only_nodes(model)}
    assert not gate_ops & {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QuantizeLinear"}
    fp32 = gated_package["torch"]["assess"]
    quantized = session(int8).run(["assess"], {"image": gated_package["val"]})[0]
    # The quality scores read the raw pixels: identical. The distance reads INT8 features: it ranks images
    # alike, on a larger scale (quantization noise inflates the feature spread), hence INT8's own thresholds.
    np.testing.assert_allclose(quantized[:, 1:], fp32[:, 1:], rtol=1e-4)
    assert np.corrcoef(quantized[:, 0], fp32[:, 0])[0, 1] > 0.7
    refit = refit_gate_thresholds(int8, gated_package["val"])
    assert refit["val_rejected"] <= 0.02
    spec = json.loads({p.key: p.value for p in onnx.load(str(int8)).metadata_props}["skinscan.assess"])
    assert spec["precision"] == "int8" and spec["checks"][-1]["above"] == refit["lesion_distance_threshold"]
    for ours, fp32_check in zip(spec["checks"][:-1], gated_package["spec"]["checks"][:-1], strict=True):
        line = "below" if "below" in ours else "above"  # the quality lines are the same
        assert ours[line] == pytest.approx(fp32_check[line], rel=1e-4) and ours["reason"] == fp32_check["reason"]


# ------------------------------------------------------------------------------ runtime and CLI answers
def dimmed(classifier: Classifier, lesion: Image.Image) -> tuple[Image.Image, list]:
    """The brightest dimmed copy of `lesion` that is "too_dark" (and every dimmed copy's answer).

    Darkening also moves the lesion distance: past some point a near-black picture is "not a lesion photo", which
    the precedence puts first. A dim picture that is still a lesion photo must be told to add light.
    """
    answers = []
    for factor in (0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        image = ImageEnhance.Brightness(lesion).enhance(factor)
        answers.append((factor, classifier.classify(image)))
        if answers[-1][1].cannot_assess == "too_dark":
            return image, answers
    raise AssertionError(f"no dimmed copy is too_dark: {[(f, p.cannot_assess, p.assessment) for f, p in answers]}")


def test_prediction_says_why_it_cannot_assess(gated_package, ham10000_dir):
    classifier = Classifier.load(gated_package["folder"], precision="fp32")
    lesion = Image.open(next((ham10000_dir / "images").glob("*.jpg"))).convert("RGB")
    image, _ = dimmed(classifier, lesion)
    dark = classifier.classify(image)
    assert dark.cannot_assess == "too_dark" and not dark.assessable and "dark" in dark.cannot_assess_message
    black = classifier.classify(ImageEnhance.Brightness(lesion).enhance(0.05))
    assert black.cannot_assess in {"too_dark", "not_a_lesion"}  # the distance may say "not a lesion" first
    tiny = classifier.classify(lesion.resize((80, 60)))
    assert tiny.cannot_assess == "too_small"
    grey = classifier.classify(lesion.convert("L"))
    assert grey.cannot_assess == "not_a_lesion"
    blurred = classifier.classify(lesion.filter(ImageFilter.GaussianBlur(6)))
    assert blurred.cannot_assess in {"too_blurry", "not_a_lesion"}
    document = dark.to_dict()
    assert document["cannot_assess"] == "too_dark" and set(document["assessment"]) == set(SPEC["scores"])


def test_predict_cli_reports_cannot_assess(gated_package, ham10000_dir, tmp_path, capsys):
    from skinscan.cli import main

    lesion = Image.open(next((ham10000_dir / "images").glob("*.jpg"))).convert("RGB")
    dimmed(Classifier.load(gated_package["folder"], precision="fp32"), lesion)[0].save(tmp_path / "dark.png")
    lesion.save(tmp_path / "lesion.png")
    assert main(["predict", str(tmp_path / "dark.png"), "--model", str(gated_package["folder"]),
                 "--precision", "fp32"]) == 0
    table = capsys.readouterr().out
    assert "CANNOT ASSESS (too dark)" in table and "too dark; add light" in table and "1 could not be assessed" in table
    assert "0 with features that look like skin cancer" in table and "P(akiec)" not in table  # plain words
    assert main(["predict", str(tmp_path), "--model", str(gated_package["folder"]), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    reasons = {p["source"].rsplit("/", 1)[-1]: p["cannot_assess"] for p in document["predictions"]}
    assert reasons["dark.png"] == "too_dark"
    dark = next(p for p in document["predictions"] if p["source"].endswith("dark.png"))
    assert dark["top"] == [] and dark["probabilities"] is None and "not shown to users" in dark["developer"]["note"]
    assert main(["predict", str(tmp_path), "--model", str(gated_package["folder"]), "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].endswith(",cannot_assess") and any(r.endswith(",too_dark") for r in rows[1:])


# ------------------------------------------------------------------------- the bundled package, measured
@pytest.fixture(scope="module")
def bundled_gate_report(ham10000_dir, split_csv, tmp_path_factory):
    pytest.importorskip("skimage", reason="the non-lesion corpus is scikit-image's sample images (`dev` extra)")
    import shutil

    from skinscan.factory.gate_report import gate_report

    package = bundled_package_dir()
    classifier = Classifier.load(package)
    if not classifier.has_assess:
        pytest.skip("the bundled package predates the gate")
    folder = tmp_path_factory.mktemp("bundled")
    for file in package.iterdir():
        if file.is_file():
            shutil.copy(file, folder / file.name)
    return gate_report(folder, ham10000_dir, split_csv, part="test")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundled_gate_meets_its_goals_on_the_test_split(bundled_gate_report, precision):
    report = bundled_gate_report[precision]
    assert report["lesions"]["images"] > 1200
    assert report["lesions"]["rejected_share"] <= 0.02, report["lesions"]
    assert report["non_lesions"]["rejected_share"] >= 0.95, report["non_lesions"]["accepted"]
    degradations = report["degradations"]
    # Darkened lesions are refused; with "not a lesion" ranked first (what the user must act on first), those whose
    # lesion distance also crosses its line are told so instead of "too dark".
    assert degradations["dark (brightness x0.3)"]["rejected_share"] >= 0.95
    assert degradations["tiny (shorter side 64 px)"]["rejected_share"] == 1.0
    assert degradations["blur (Gaussian, radius 4 px)"]["rejected_share"] >= 0.95
    assert degradations["overexposed (brightness x3)"]["rejected_share"] >= 0.95
    # The figures in the model card are these (written by `skinscan gate` into the package at bundling time).
    shipped = json.loads((bundled_package_dir() / "gate.json").read_text())[precision]
    assert shipped["lesions"]["rejected"] == report["lesions"]["rejected"]
    assert shipped["non_lesions"]["rejected"] == report["non_lesions"]["rejected"]


# ------------------------------------------------------------------------- a fresh non-lesion set
def test_folder_corpus_takes_every_readable_image_and_crops_the_large_ones(tmp_path):
    from PIL import Image

    from skinscan.factory.nonlesion import folder_corpus

    Image.new("RGB", (400, 300), (10, 120, 30)).save(tmp_path / "field.jpg")
    Image.new("RGBA", (120, 90), (200, 0, 0, 128)).save(tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    items = folder_corpus(tmp_path)
    assert [item.name for item in items][:2] == ["field.jpg", "field.jpg (top left)"]
    assert len(items) == 6 and {item.image.mode for item in items} == {"RGB"}
    assert {item.group for item in items} == {"fresh: whole images", "fresh: crops"}


def test_gate_measures_a_fresh_non_lesion_set(ham10000_dir, split_csv, tmp_path, capsys):
    pytest.importorskip("skimage", reason="the non-lesion corpus is scikit-image's sample images (`dev` extra)")
    import shutil

    from PIL import Image

    from skinscan.cli import main

    package = tmp_path / "package"
    shutil.copytree(bundled_package_dir(), package)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for i, colour in enumerate([(0, 90, 200), (240, 240, 240), (30, 30, 30)]):
        Image.new("RGB", (400, 300), colour).save(fresh / f"flat{i}.png")  # whole + 4 quadrant crops
    args = ["gate", "--model", str(package), "--data", str(ham10000_dir), "--split", str(split_csv),
            "--max-images", "8", "--degraded", "2"]
    assert main([*args, "--fresh-non-lesions", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "fresh non-lesion set: 15/15 (100.0%) turned away" in out  # flat colour: never a lesion photo
    report = json.loads((package / "gate.json").read_text())["fp32"]["fresh_non_lesions"]
    assert report["images"] == 15 and report["accepted"] == []
    assert main([*args, "--fresh-non-lesions", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--fresh-non-lesions", str(empty)]) == 2
    assert "no readable .jpg or .png images" in capsys.readouterr().err
