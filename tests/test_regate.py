"""`skinscan regate`: the gate re-fitted from the ONNX graphs alone. The classifier's outputs stay bit-identical,
the graph computes the fitted scores, the dermoscopy score separates dermoscopy-like from photo-like images,
the external collection never reaches the fit, and bad input gets a clear message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from PIL import Image

from skinscan.cli import main
from skinscan.factory.regate import (
    FitData,
    device_views,
    extra_rows,
    fit_dermoscopy,
    gate_scores,
    regate_package,
    score_numpy,
    statistics_tensors,
)
from skinscan.runtime.assess import DERMOSCOPY, SCORES, AssessSpec
from skinscan.runtime.classifier import FP32_FILE, INT8_FILE, Classifier, bundled_package_dir

pytest.importorskip("skimage", reason="the ordinary photos of skin are crops of scikit-image's portrait (`dev` extra)")


@pytest.fixture(scope="module")
def bundled_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("package")
    for file in bundled_package_dir().iterdir():
        if file.is_file():
            shutil.copy(file, folder / file.name)
    return folder


def _lesions(ham10000_dir, split_csv, part: str, count: int) -> list[Image.Image]:
    split = pd.read_csv(split_csv)
    ids = split[split.split == part].image_id.head(count)
    return [Image.open(ham10000_dir / "images" / f"{image_id}.jpg").convert("RGB") for image_id in ids]


@pytest.fixture(scope="module")
def regated(bundled_copy, ham10000_dir, split_csv):
    """The bundled package re-gated on a small fit (HAM10000 only, 60 lesions, 40 ordinary photos)."""
    images = _lesions(ham10000_dir, split_csv, "test", 12)
    before = {p: Classifier.load(bundled_copy, precision=p, threads=1) for p in ("fp32", "int8")}
    inputs = {p: np.stack([c.preprocess(image) for image in images]) for p, c in before.items()}
    outputs_before = {p: c.run_arrays(inputs[p]) for p, c in before.items()}
    report = regate_package(bundled_copy, FitData(ham10000_dir, split_csv, per_source=60, ordinary=40, threads=1))
    return {"folder": bundled_copy, "inputs": inputs, "before": outputs_before, "report": report}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_regate_keeps_the_classifier_outputs_bit_identical(regated, precision):
    after = Classifier.load(regated["folder"], precision=precision, threads=1)  # verifies the new manifest
    outputs = after.run_arrays(regated["inputs"][precision])
    for name in ("probabilities", "cam"):
        assert np.array_equal(outputs[name], regated["before"][precision][name]), name
    old, new = regated["before"][precision]["assess"], outputs["assess"]
    assert new.shape == (len(old), len(SCORES) + 1)
    assert np.array_equal(new[:, 1:4], old[:, 1:4])  # the quality scores are not touched either
    assert after.assess_spec.scores == (*SCORES, DERMOSCOPY)
    assert any(check.reason == "not_dermoscopic" for check in after.assess_spec.checks)


def test_regate_writes_the_fitted_numbers_into_both_graphs(regated):
    folder = regated["folder"]
    graphs = {p: onnx.load(str(folder / f)) for p, f in (("fp32", FP32_FILE), ("int8", INT8_FILE))}
    # The INT8 graph keeps blocks 1-5 float: the same statistics tensors, so the same parameters apply.
    assert statistics_tensors(graphs["fp32"]).keys() == statistics_tensors(graphs["int8"]).keys()
    fp32 = gate_scores(graphs["fp32"], regated["inputs"]["fp32"])
    int8 = gate_scores(graphs["int8"], regated["inputs"]["int8"])
    # (not bit-equal: the two graphs' float blocks are fused and scheduled differently by ORT)
    for block in fp32.statistics:
        assert np.allclose(fp32.statistics[block], int8.statistics[block], rtol=1e-2, atol=1e-2)
    assert np.allclose(fp32.column("lesion_distance"), int8.column("lesion_distance"), rtol=2e-2, atol=2e-2)
    assert (folder / "skinscan-int8.ort").is_file()  # the ORT form was re-made (its sha256 is in the manifest)


def test_dermoscopy_score_reads_the_pooled_features_in_both_graphs(regated):
    """The default fit reads the classifier's pooled features: the FP32 graph's head input as it is, the INT8
    graph's through one added DequantizeLinear (the head's QGemm still reads the quantized tensor)."""
    from skinscan.factory.regate import POOLED_OUTPUT, pooled_features_tensor

    folder = regated["folder"]
    fp32, int8 = (onnx.load(str(folder / f)) for f in (FP32_FILE, INT8_FILE))
    assert pooled_features_tensor(fp32) == "/Flatten_2_output_0"
    assert [n.op_type for n in int8.graph.node if POOLED_OUTPUT in n.output] == ["DequantizeLinear"]
    for model in (fp32, int8):
        names = {init.name for init in model.graph.initializer}
        assert "gate.dermoscopy_weight_pooled" in names and "gate.dermoscopy_weight_4" not in names
    a, b = gate_scores(fp32, regated["inputs"]["fp32"]), gate_scores(int8, regated["inputs"]["int8"])
    assert a.pooled.shape == b.pooled.shape == (len(regated["inputs"]["fp32"]), 576)
    assert np.corrcoef(a.column(DERMOSCOPY), b.column(DERMOSCOPY))[0, 1] > 0.95  # INT8 pooled features: close


def test_regate_is_idempotent_in_structure(regated, ham10000_dir, split_csv):
    """A second re-fit replaces the numbers; it does not add a second dermoscopy column."""
    regate_package(regated["folder"], FitData(ham10000_dir, split_csv, per_source=30, ordinary=20, threads=1))
    classifier = Classifier.load(regated["folder"], precision="fp32", threads=1)
    assert classifier.run_arrays(regated["inputs"]["fp32"])["assess"].shape[1] == len(SCORES) + 1


# ------------------------------------------------------------------------------------- the dermoscopy score
def _dermoscopy_like(rng, size=(336, 252)) -> Image.Image:
    """A brown blotch with a reticular pattern on pinkish skin, under a dark circular vignette."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot(yy - height / 2, xx - width / 2)
    skin = np.array([215, 160, 150]) + rng.normal(0, 6, 3)
    lesion = np.array([110, 70, 50]) + rng.normal(0, 8, 3)
    blotch = radius < rng.uniform(50, 90)
    network = (np.sin(xx / rng.uniform(2, 4)) * np.sin(yy / rng.uniform(2, 4)) > 0.2) & blotch
    pixels = np.where(blotch[..., None], lesion, skin) - 40 * network[..., None] + rng.normal(0, 5, (height, width, 3))
    pixels *= (radius < rng.uniform(0.45, 0.55) * np.hypot(width, height))[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _photo_like(rng, size=(336, 252)) -> Image.Image:
    """Evenly lit skin with a soft shading gradient and sensor noise: a phone photo of skin, no dermatoscope."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.array([200, 150, 125]) + rng.normal(0, 10, 3)
    shading = 1 + 0.15 * (xx / width - 0.5) * rng.choice([-1, 1]) + 0.1 * (yy / height - 0.5)
    pixels = base * shading[..., None] + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_dermoscopy_score_separates_dermoscopy_like_from_photo_like_images():
    classifier = Classifier.load(bundled_package_dir(), precision="fp32", threads=1)
    model = onnx.load(str(bundled_package_dir() / FP32_FILE))
    rng = np.random.default_rng(0)
    dermoscopic = np.stack([classifier.preprocess(_dermoscopy_like(rng)) for _ in range(40)])
    ordinary = np.stack([classifier.preprocess(_photo_like(rng)) for _ in range(40)])
    d, o = gate_scores(model, dermoscopic).statistics, gate_scores(model, ordinary).statistics
    fit, held = slice(0, 25), slice(25, 40)
    weight, bias = fit_dermoscopy({b: v[fit] for b, v in d.items()}, [{b: v[fit] for b, v in o.items()}])

    def score(statistics):
        return sum(statistics[b][held] @ w for b, w in weight.items()) + bias
    assert score(d).min() > score(o).max()  # held-out images: complete separation, dermoscopy scores higher


def test_score_numpy_is_the_distance_definition():
    rng = np.random.default_rng(0)
    from skinscan.factory.regate import GateParameters, fit_gaussian

    x = {4: rng.normal(size=(500, 6)), 5: rng.normal(size=(500, 6)) * 3}
    parameters = GateParameters({}, {})
    for block, values in x.items():
        parameters.mean[block], parameters.whiten[block] = fit_gaussian(values)
    distance, _ = score_numpy(parameters, x)
    # Each block's distance is scaled to median 1, so the sum of the two has a median near 2.
    assert 1.7 < np.median(distance) < 2.3


def test_device_views_keep_shape_and_change_pixels():
    images = np.random.default_rng(0).integers(0, 255, (4, 60, 80, 3), dtype=np.uint8)
    views = device_views(images)
    assert views.shape == images.shape and views.dtype == np.uint8 and not np.array_equal(views, images)


# --------------------------------------------------------------------- what the fit may read (and not)
def _extra_folder(tmp_path, external_dx: str):
    rows = [{"lesion_id": f"L{i // 2}", "image_id": f"ISIC_{i:07d}", "dx": "nv", "collection": "bcn20000",
             "width": 84, "height": 84} for i in range(40)]
    rows += [{"lesion_id": f"E{i}", "image_id": f"ISIC_9{i:06d}", "dx": external_dx, "collection": "msk",
              "width": 256, "height": 256} for i in range(10)]
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path


def test_the_external_collection_never_reaches_the_fit(tmp_path):
    first = extra_rows(_extra_folder(tmp_path / "a", "nv"))
    second = extra_rows(_extra_folder(tmp_path / "b", "mel"))
    assert (first.width != 256).all() and len(first) == 40
    pd.testing.assert_frame_equal(first.reset_index(drop=True), second.reset_index(drop=True))
    # Lesion-grouped: no lesion has images in both parts.
    assert not set(first[first.part == "fit"].lesion_id) & set(first[first.part == "val"].lesion_id)


def test_thresholds_ignore_the_external_images(bundled_copy, ham10000_dir, split_csv, tmp_path, monkeypatch):
    """A spy on decoding: the fit decodes no image of the external collection (their files need not exist)."""
    import skinscan.factory.regate as regate

    folder = _extra_folder(tmp_path, "nv")
    decoded = []
    real = regate._decode

    def spy(image_dir, image_ids, *args, **kwargs):
        decoded.extend(image_ids)
        if image_dir == folder / "images":  # the 84-px rows: stand-ins, the files are not there
            return np.zeros((len(image_ids), 252, 336, 3), np.uint8) + 128
        return real(image_dir, image_ids, *args, **kwargs)
    monkeypatch.setattr(regate, "_decode", spy)
    regate.fit_sets(FitData(ham10000_dir, split_csv, folder, per_source=10, ordinary=5, threads=1),
                    Classifier.load(bundled_copy, precision="fp32").config)
    assert decoded and not any(image_id.startswith("ISIC_9") for image_id in decoded)


# ---------------------------------------------------------------------------------------- bad input
def test_cli_refuses_a_missing_package(tmp_path, ham10000_dir, split_csv, capsys):
    assert main(["regate", "--model", str(tmp_path), "--data", str(ham10000_dir), "--split", str(split_csv)]) == 2
    assert "skinscan.onnx" in capsys.readouterr().err


def test_cli_refuses_a_tampered_package(bundled_copy, tmp_path, ham10000_dir, split_csv, capsys):
    folder = tmp_path / "tampered"
    shutil.copytree(bundled_copy, folder)
    data = bytearray((folder / FP32_FILE).read_bytes())
    data[-10] ^= 0xFF
    (folder / FP32_FILE).write_bytes(bytes(data))
    assert main(["regate", "--model", str(folder), "--data", str(ham10000_dir), "--split", str(split_csv)]) == 2
    assert "does not match its manifest" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--data", "--extra"])
def test_cli_refuses_a_missing_data_folder(tmp_path, split_csv, option, capsys):
    args = ["regate", "--model", str(bundled_package_dir()), "--split", str(split_csv), option, str(tmp_path / "nope")]
    assert main(args) == 2
    assert f"{option} {tmp_path / 'nope'} is not a folder" in capsys.readouterr().err


def test_judge_knows_the_new_reason():
    spec = AssessSpec.from_metadata({"scores": [*SCORES, DERMOSCOPY], "checks": [
        {"score": DERMOSCOPY, "below": 0.0, "reason": "not_dermoscopic"}]})
    verdict = spec.judge([1.0, 10.0, 150.0, 30.0, -2.0])
    assert verdict.reason == "not_dermoscopic" and "dermatoscope" in verdict.message


def test_thresholds_hold_for_every_source():
    """Per-source lines: a small source with larger distances and darker images is not sacrificed to a big one."""
    from skinscan.runtime.assess import choose_thresholds

    rng = np.random.default_rng(0)
    big, small = 2000, 600
    scores = np.column_stack([
        np.r_[rng.chisquare(80, big) / 80, 1.5 * rng.chisquare(80, small) / 80],  # the small source: farther
        rng.lognormal(2, 1, big + small),
        np.r_[rng.normal(155, 20, big), rng.normal(110, 20, small)],  # and darker
        rng.normal(30, 8, big + small), rng.normal(5, 1, big + small)])
    groups = np.r_[np.zeros(big), np.ones(small)]
    spec = choose_thresholds(scores, budget=0.015, scores=[*SCORES, DERMOSCOPY], groups=groups)
    judge = AssessSpec.from_metadata(spec)
    for group in (0, 1):
        rejected = np.mean([not judge.judge(row).assessable for row in scores[groups == group]])
        assert rejected <= 0.015, (group, rejected)
    pooled = AssessSpec.from_metadata(choose_thresholds(scores, budget=0.015, scores=[*SCORES, DERMOSCOPY]))
    assert np.mean([not pooled.judge(row).assessable for row in scores[groups == 1]]) > 0.015  # what groups fix


def test_model_card_shows_the_external_collection_and_ordinary_photos():
    from skinscan.factory.model_card import _gate_section

    def summary(rejected, images, reasons=None):
        return {"images": images, "rejected": rejected, "rejected_share": rejected / images, "reasons": reasons or {}}
    report = {"part": "test", "thresholds": {"scores": [*SCORES, DERMOSCOPY], "budget": 0.015},
              "lesions": summary(19, 1277), "non_lesions": {**summary(144, 144), "groups": {}, "accepted": []},
              "external": {**summary(295, 2745), "by_collection": {"msk": summary(50, 819)},
                           "degradations": {"blur": summary(394, 400)}},
              "ordinary_skin_photos": {**summary(67, 100), "not_dermoscopic_share": 0.2},
              "degradations": {"blur": summary(399, 400)}}
    section = _gate_section({"fp32": report})
    assert "never fitted on) turned away (goal <= 5%) | 295/2745 (10.7%) |" in section
    assert "67/100 (67.0%) / 20%" in section and "`not_dermoscopic`" in section and "two faces" in section


# ------------------------------------------------------------------------------------ the unseen-source line
def _synthetic_fit(rng, shifts: dict[int, float], count: int = 400, width: int = 8):
    """FitScores of two synthetic sources (Gaussian block statistics, each source shifted along its own axes),
    with plain validation sets and ordinary photos; the quality scores are unremarkable for every row."""
    from skinscan.factory.regate import EXTRA, HAM10000, FitScores, GateScores

    def sample(source, n):
        centre = np.zeros(width)
        centre[source * 2:source * 2 + 2] = shifts[source]
        return {block: rng.normal(centre, 1.0, (n, width)) for block in (4, 5)}

    def scores(statistics):
        n = len(statistics[4])
        assess = np.column_stack([np.zeros(n), rng.lognormal(3, 0.3, n), rng.normal(150, 10, n), rng.normal(30, 3, n)])
        return GateScores(statistics, assess, list(SCORES))

    def joined(*parts):
        return {block: np.concatenate([p[block] for p in parts]) for block in (4, 5)}
    ordinary = {block: rng.normal(-4.0, 1.0, (count // 2, width)) for block in (4, 5)}
    sets = {"lesions": scores(joined(sample(HAM10000, count), sample(EXTRA, count))),
            "val": scores(sample(HAM10000, count)), "val_low_resolution": scores(sample(EXTRA, count)),
            "ordinary": scores(ordinary)}
    return FitScores(sets, np.r_[np.full(count, HAM10000), np.full(count, EXTRA)]), sample


def test_unseen_source_line_keeps_more_of_a_third_source(tmp_path):
    """Two training sources shifted apart; a third, shifted along axes neither showed. The line drawn for an
    unseen source (leave-one-source-out) keeps more of the third source's lesions than the in-source line,
    and still turns away points far from all of them."""
    from skinscan.factory.regate import FitScores, fit_gate_and_thresholds

    rng = np.random.default_rng(0)
    fit, sample = _synthetic_fit(rng, {0: 0.0, 1: 1.5, 2: 1.5})
    distance_line = {}
    for line in ("in-source", "unseen-source"):
        parameters, spec = fit_gate_and_thresholds(fit, line=line, features="block-statistics")
        distance_line[line] = next(c["above"] for c in spec["checks"] if c["score"] == "lesion_distance")
    third = sample(2, 1000)
    parameters, spec = fit_gate_and_thresholds(fit, line="unseen-source", features="block-statistics")
    distance, _ = score_numpy(parameters, third)
    kept = {line: np.mean(distance <= value) for line, value in distance_line.items()}
    assert distance_line["unseen-source"] > distance_line["in-source"]
    assert kept["unseen-source"] > kept["in-source"] + 0.05, kept
    far, _ = score_numpy(parameters, {block: rng.normal(6.0, 1.0, (200, 8)) for block in (4, 5)})
    assert np.mean(far > distance_line["unseen-source"]) > 0.99
    unseen = spec["unseen_source"]
    assert set(unseen["ratio_when_unseen"]) == {"ham10000", "isic2019_extra"}
    assert min(unseen["ratio_when_unseen"].values()) > 1  # an unseen source's lesions lie farther out
    assert spec["val_rejected"] <= spec["budget"]
    moved = unseen["dermoscopy"]  # the dermoscopy line is drawn for an unseen device too: never above in-source
    assert moved["line"] <= moved["in_source_line"] and set(moved["shift_when_unseen"]) == {"ham10000"}
    assert next(c["below"] for c in spec["checks"] if c["score"] == DERMOSCOPY) == moved["line"]
    # the cache keeps the sources
    fit.save(tmp_path / "fit.npz")
    assert np.array_equal(FitScores.load(tmp_path / "fit.npz").lesion_source, fit.lesion_source)


def test_unseen_source_line_refuses_fits_it_cannot_use():
    from skinscan.factory.regate import FitScores, fit_gate_and_thresholds

    fit, _ = _synthetic_fit(np.random.default_rng(1), {0: 0.0, 1: 1.5})
    with pytest.raises(ValueError, match="delete the --cache file"):
        fit_gate_and_thresholds(FitScores(fit.sets, None), line="unseen-source", features="block-statistics")
    one_source = FitScores({k: v for k, v in fit.sets.items() if k != "val_low_resolution"}, fit.lesion_source)
    with pytest.raises(ValueError, match="needs two training sources"):
        fit_gate_and_thresholds(one_source, line="unseen-source", features="block-statistics")
    with pytest.raises(ValueError, match="choose one of"):
        fit_gate_and_thresholds(fit, line="nearest")
    with pytest.raises(ValueError, match="no pooled features"):  # a cache from before the pooled features
        fit_gate_and_thresholds(fit, line="in-source", features="pooled")


def test_cli_unseen_source_line_needs_the_extra_folder(tmp_path, ham10000_dir, split_csv, capsys):
    args = ["regate", "--model", str(bundled_package_dir()), "--data", str(ham10000_dir), "--split", str(split_csv),
            "--line", "unseen-source"]
    assert main(args) == 2
    assert "pass --extra" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- your own ordinary photos
def test_your_own_ordinary_photos_join_the_fit_and_are_measured_held_out(tmp_path, ham10000_dir, split_csv, capsys):
    """`--ordinary-photos DIR`: a hash-chosen part of the folder joins the dermoscopy score's negatives, the rest
    is reported as held out; photo-like images the score learned are refused when held out."""
    from skinscan.factory.negatives import folder_photos

    folder = tmp_path / "ordinary"
    rng = np.random.default_rng(3)
    for i in range(30):
        (folder / f"set{i % 3}").mkdir(parents=True, exist_ok=True)
        _photo_like(rng, size=(640, 480)).save(folder / f"set{i % 3}" / f"photo{i}.jpg")
    parts = [photo.part for photo in folder_photos(folder)]
    assert len(parts) == 30 and {"fit", "held_out"} <= set(parts)
    package = tmp_path / "package"
    shutil.copytree(bundled_package_dir(), package)
    args = ["regate", "--model", str(package), "--data", str(ham10000_dir), "--split", str(split_csv),
            "--per-source", "40", "--ordinary", "30", "--ordinary-photos", str(folder), "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if text.startswith("ordinary photos held out:"))
    share = float(line.split(":")[1].split("%")[0]) / 100
    assert share >= 0.8, line  # evenly lit skin, as in the fit: refused
    assert "'ordinary_photos': 30" in out


def test_ordinary_photo_folders_that_cannot_be_used_are_refused(tmp_path, ham10000_dir, split_csv, capsys):
    from skinscan.factory.negatives import NegativesError, folder_photos, random_crops

    args = ["regate", "--model", str(bundled_package_dir()), "--data", str(ham10000_dir), "--split", str(split_csv),
            "--ordinary-photos", str(tmp_path / "nope")]
    assert main(args) == 2
    assert f"--ordinary-photos {tmp_path / 'nope'} is not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NegativesError, match="no .jpg or .png photos"):
        folder_photos(empty)
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    photos = folder_photos(empty)
    with pytest.raises(NegativesError, match="broken.jpg: not a readable image"):
        random_crops(photos, photos[0].part, 2)


# ------------------------------------------------------------------------------------- the words a user reads
def test_refresh_messages_changes_only_the_words(tmp_path, ham10000_dir, capsys):
    from skinscan.factory.onnx_metadata import read_metadata, set_metadata
    from skinscan.runtime.assess import MESSAGES
    from skinscan.runtime.manifest import write_manifest

    package = tmp_path / "package"
    shutil.copytree(bundled_package_dir(), package)
    for file in (FP32_FILE, INT8_FILE):  # a package written before the wording changed
        model = onnx.load(str(package / file))
        spec = read_metadata(model)["skinscan.assess"]
        spec["messages"]["not_a_lesion"] = "an old wording"
        set_metadata(model, {"skinscan.assess": json.dumps(spec)})
        onnx.save(model, str(package / file))
    write_manifest(package)
    images = [Image.open(p).convert("RGB") for p in sorted((ham10000_dir / "images").glob("*.jpg"))[:6]]
    before = {p: Classifier.load(package, precision=p, threads=1) for p in ("fp32", "int8")}
    outputs = {p: c.run_arrays(np.stack([c.preprocess(i) for i in images])) for p, c in before.items()}
    assert before["fp32"].assess_spec.messages["not_a_lesion"] == "an old wording"
    assert main(["regate", "--model", str(package), "--messages-only"]) == 0
    assert "nothing else changed" in capsys.readouterr().out
    for precision, old in outputs.items():
        after = Classifier.load(package, precision=precision, threads=1)  # the manifest was rewritten too
        assert after.assess_spec.messages["not_a_lesion"] == MESSAGES["not_a_lesion"]
        new = after.run_arrays(np.stack([after.preprocess(i) for i in images]))
        assert all(np.array_equal(old[name], new[name]) for name in old)


def test_the_bundled_package_says_what_this_version_says():
    """The bundled package's messages are the runtime's: change MESSAGES, then run `skinscan regate --model
    src/skinscan/models --messages-only`."""
    from skinscan.runtime.assess import MESSAGES

    for precision in ("fp32", "int8"):
        spec = Classifier.load(bundled_package_dir(), precision=precision).assess_spec
        assert {reason: spec.messages[reason] for reason in MESSAGES} == MESSAGES
        assert "dermatoscope" in spec.messages["not_a_lesion"]


# ------------------------------------------------------------------------------------- keep the package's lines
def test_keep_adds_only_the_dermoscopy_check(tmp_path, ham10000_dir, split_csv):
    """--line keep: every line and the distance's numbers stay the package's own (per precision), one
    dermoscopy check is added at the 0.25% tail of HAM10000 val, and the classifier's outputs do not move."""
    from skinscan.factory.onnx_metadata import read_metadata
    from skinscan.factory.regate import MEAN, WHITEN

    package = tmp_path / "package"
    shutil.copytree(bundled_package_dir(), package)
    before = {f: onnx.load(str(package / f)) for f in (FP32_FILE, INT8_FILE)}
    report = regate_package(package, FitData(ham10000_dir, split_csv, per_source=40, ordinary=30, threads=1),
                            line="keep")
    for file, old in before.items():
        new = onnx.load(str(package / file))
        old_spec, new_spec = read_metadata(old)["skinscan.assess"], read_metadata(new)["skinscan.assess"]
        assert new_spec["checks"][:-1] == old_spec["checks"]  # the package's own lines, this precision's
        assert new_spec["checks"][-1]["score"] == DERMOSCOPY and new_spec["scores"][-1] == DERMOSCOPY
        assert "--line keep" in new_spec["rule"] and "dermoscopy score fitted" in new_spec["fit"]
        old_init = {i.name: onnx.numpy_helper.to_array(i) for i in old.graph.initializer}
        new_init = {i.name: onnx.numpy_helper.to_array(i) for i in new.graph.initializer}
        for block in (4, 5):
            for name in (MEAN.format(block), WHITEN.format(block)):
                assert np.array_equal(old_init[name], new_init[name]), name
    assert report["fp32"]["val_rejected"] <= 0.03
