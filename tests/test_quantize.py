"""INT8 quantization: each graph edit keeps the model's outputs (within quantization noise), and the package step."""

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="building a test model needs the `train` extra (torch)")

from skinscan.factory.data import load_split_images  # noqa: E402
from skinscan.factory.export import export_onnx, package_metadata  # noqa: E402
from skinscan.factory.model import create_model  # noqa: E402
from skinscan.factory.quantize import (  # noqa: E402
    FLOAT_BLOCKS,
    feed_pixels_to_stem,
    fold_normalization_into_stem,
    fuse_hardsigmoid_gates,
    onnx_probabilities,
    quantize_package,
    quantize_package_model,
    session,
)
from skinscan.runtime.manifest import verify_file, write_manifest  # noqa: E402
from skinscan.runtime.preprocess import PreprocessConfig  # noqa: E402

SIZE = PreprocessConfig((96, 128), "center_crop")


@pytest.fixture(scope="module")
def lesion_images(ham10000_dir, split_csv):
    return load_split_images(ham10000_dir, split_csv, "val", SIZE, max_images=70)[0]


@pytest.fixture(scope="module")
def fp32_package(tmp_path_factory, pretrained_v3_small, lesion_images):
    """An ImageNet backbone with a head fitted to spread its logits: realistic activations, no training."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", pretrained=pretrained_v3_small).eval()
    torch.nn.init.normal_(model.net.classifier[-1].weight, std=0.3)
    package = tmp_path_factory.mktemp("package")
    export_onnx(model, SIZE, package / "skinscan.onnx", 1.0,
                package_metadata(SIZE, model.config.to_json(), 1.0, {"malignant": 0.3}))
    write_manifest(package)
    return package


def logits(model_or_path, images):
    path = model_or_path
    if isinstance(model_or_path, onnx.ModelProto):
        path = model_or_path.SerializeToString()
    return session(path).run(["logits"], {"image": images})[0]


def test_folding_the_normalisation_keeps_the_fp32_outputs(fp32_package, lesion_images):
    original = onnx.load(str(fp32_package / "skinscan.onnx"))
    folded = fold_normalization_into_stem(onnx.load(str(fp32_package / "skinscan.onnx")))
    assert [n.op_type for n in folded.graph.node].count("Div") == 0
    reference, edited = logits(original, lesion_images), logits(folded, lesion_images)
    # Only the one-pixel border of the stem sees pixel 128 instead of the mean 127.5 (0.4% of the
    # normalised range): far below INT8's own noise, though global pooling spreads it a little everywhere.
    assert np.abs(edited - reference).max() < 0.02 * np.abs(reference).max()
    assert np.abs(edited - reference).mean() < 0.005 * np.abs(reference).mean()
    assert (edited.argmax(1) == reference.argmax(1)).all()


@pytest.fixture(scope="module")
def quantized_pair(fp32_package, lesion_images, tmp_path_factory):
    """The same calibration, with and without the speed edits."""
    folder = tmp_path_factory.mktemp("int8")
    calibration = lesion_images[:24]
    quantize_package_model(fp32_package / "skinscan.onnx", folder / "plain.onnx", calibration,
                           calibrate_method="MinMax", graph_edits=False)
    settings = quantize_package_model(fp32_package / "skinscan.onnx", folder / "edited.onnx", calibration,
                                      calibrate_method="MinMax", graph_edits=True)
    return folder / "plain.onnx", folder / "edited.onnx", settings


def test_graph_edits_remove_the_float_round_trips(quantized_pair):
    plain, edited, settings = quantized_pair
    assert settings["squeeze_excite"] == 9 and settings["hardswish"] == 19  # MobileNetV3-Small's gates
    plain_ops = [n.op_type for n in onnx.load(str(plain)).graph.node]
    edited_ops = [n.op_type for n in onnx.load(str(edited)).graph.node]
    assert plain_ops.count("HardSigmoid") == 28 and plain_ops.count("Sub") == 1
    for op in ("HardSigmoid", "Sub", "Div", "Cast", "QuantizeLinear"):
        assert op not in edited_ops, op
    assert edited_ops.count("DequantizeLinear") <= 2  # only before the float outputs


def test_edited_int8_graph_matches_the_unedited_one_within_quantization_noise(quantized_pair, fp32_package,
                                                                            lesion_images):
    plain, edited, _ = quantized_pair
    fp32 = logits(fp32_package / "skinscan.onnx", lesion_images)
    plain_logits, edited_logits = logits(plain, lesion_images), logits(edited, lesion_images)
    quantization_noise = np.abs(plain_logits - fp32).mean()
    assert quantization_noise > 0  # the INT8 graph really is quantized
    # The edits change rounding (gates at 1/255 resolution, pixels read exactly) but not the function:
    # their difference from the plain INT8 graph is of the same order as INT8's own error.
    assert np.abs(edited_logits - plain_logits).mean() < 2.0 * quantization_noise
    # The edited graph is as faithful to FP32 as the plain INT8 graph is.
    correlation = {name: np.corrcoef(values.ravel(), fp32.ravel())[0, 1]
                   for name, values in (("plain", plain_logits), ("edited", edited_logits))}
    assert correlation["edited"] > correlation["plain"] - 0.02
    agreement = {name: (values.argmax(1) == fp32.argmax(1)).mean()
                 for name, values in (("plain", plain_logits), ("edited", edited_logits))}
    assert agreement["edited"] >= agreement["plain"] - 0.05


def test_each_int8_edit_alone_stays_within_quantization_noise(quantized_pair, fp32_package, lesion_images, tmp_path):
    plain, _, _ = quantized_pair
    fp32 = logits(fp32_package / "skinscan.onnx", lesion_images)
    reference = logits(plain, lesion_images)
    noise = np.abs(reference - fp32).mean()  # what INT8 itself costs

    fused, counts = fuse_hardsigmoid_gates(onnx.load(str(plain)))
    onnx.checker.check_model(fused)
    assert counts == {"squeeze_excite": 9, "hardswish": 19}
    assert np.abs(logits(fused, lesion_images) - reference).mean() < 0.75 * noise

    # The pixel edit needs the FP32 normalisation folded first, then quantized.
    onnx.save(fold_normalization_into_stem(onnx.load(str(fp32_package / "skinscan.onnx"))), str(tmp_path / "f.onnx"))
    quantize_package_model(tmp_path / "f.onnx", tmp_path / "q.onnx", lesion_images[:24], calibrate_method="MinMax",
                           graph_edits=False)
    before = onnx.load(str(tmp_path / "q.onnx"))
    after = feed_pixels_to_stem(onnx.load(str(tmp_path / "q.onnx")))
    assert "Cast" not in [n.op_type for n in after.graph.node]
    # Pixels are now read exactly instead of through a calibrated scale: a rounding-level change.
    assert np.abs(logits(after, lesion_images) - logits(before, lesion_images)).mean() < 0.5 * noise


def test_temperature_and_softmax_stay_float(quantized_pair):
    _, edited, settings = quantized_pair
    assert settings["calibrate_method"] == "MinMax" and settings["float_nodes"] == 2
    ops = [n.op_type for n in onnx.load(str(edited)).graph.node]
    assert ops.count("Softmax") == 1 and "QLinearSoftmax" not in ops  # probabilities at full resolution


def test_float_blocks_stay_entirely_float(fp32_package, lesion_images, tmp_path):
    """Every node of the first FLOAT_BLOCKS blocks runs in float, including the HardSwish gates, which
    quant_pre_process inlines into unnamed HardSigmoid + Mul nodes (once quantized as QLinearMul round trips)."""
    int8 = tmp_path / "mixed.onnx"
    quantize_package_model(fp32_package / "skinscan.onnx", int8, lesion_images[:24], calibrate_method="MinMax",
                           float_blocks=FLOAT_BLOCKS)
    scopes = tuple(f"/features.{i}/" for i in range(FLOAT_BLOCKS))
    nodes = onnx.load(str(int8)).graph.node
    integer_in_blocks = [(n.op_type, n.output[0]) for n in nodes if n.op_type.startswith("QLinear")
                         and any(scope in out for scope in scopes for out in n.output)]
    assert integer_in_blocks == []
    float_gates = [n for n in nodes if n.op_type == "Mul" and any(scope in n.output[0] for scope in scopes)
                   and "HardSwish" in n.output[0]]
    assert len(float_gates) == 5  # the stem's HardSwish and two in each of blocks 4 and 5
    # Quantization happens once, where block FLOAT_BLOCKS begins (plus the float heads' own inputs).
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) <= 2


def test_colour_constancy_exports_exactly_and_stays_float_in_int8(pretrained_v3_small, fp32_package, lesion_images,
                                                                  tmp_path):
    """A Shades-of-Gray model (`--color-constancy`, run J): the ONNX graph computes what torch does, and INT8
    keeps the colour constancy in float with the float blocks, so the blocks still see whole pixel values."""
    from skinscan.factory.export import torch_probabilities

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", pretrained=pretrained_v3_small, color_constancy="shades_of_gray")
    torch.nn.init.normal_(model.net.classifier[-1].weight, std=0.3)
    model.eval()
    fp32 = export_onnx(model, SIZE, tmp_path / "skinscan.onnx", 1.0,
                       package_metadata(SIZE, model.config.to_json(), 1.0, {"malignant": 0.3}))
    expected = torch_probabilities(model, lesion_images, 1.0)
    actual = onnx_probabilities(fp32, lesion_images)
    assert expected.std(axis=0).max() > 0.01  # the images get different answers: the comparison means something
    assert np.abs(actual - expected).max() <= 1e-4
    int8 = tmp_path / "int8.onnx"
    quantize_package_model(fp32, int8, lesion_images[:24], float_blocks=FLOAT_BLOCKS)
    nodes = onnx.load(str(int8)).graph.node
    assert {"Pow", "ReduceMean", "Round"} <= {n.op_type for n in nodes}
    # torch.onnx names the colour constancy's nodes /model/... (SkinLesionNet.normalize), the network's /model/net/...
    preprocessing = [n for n in nodes if n.name.startswith("/model/") and not n.name.startswith("/model/net/")]
    assert len(preprocessing) >= 10
    assert sum(n.op_type == "Pow" for n in preprocessing) == 1  # the root of the 3 illuminant values; no per-pixel Pow
    assert sum(n.op_type == "ReduceMean" for n in preprocessing) == 2  # rows, then row means: short float32 sums
    assert not any(n.op_type.startswith("QLinear") or "Quantize" in n.op_type for n in preprocessing)
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) <= 2
    agreement = (onnx_probabilities(int8, lesion_images).argmax(1) == actual.argmax(1)).mean()
    # As faithful as INT8 of the same network without colour constancy (random heads: ~0.8-0.9 top-1 agreement).
    quantize_package_model(fp32_package / "skinscan.onnx", tmp_path / "plain.onnx", lesion_images[:24],
                           float_blocks=FLOAT_BLOCKS)
    plain_fp32 = onnx_probabilities(fp32_package / "skinscan.onnx", lesion_images)
    plain_agreement = (onnx_probabilities(tmp_path / "plain.onnx", lesion_images).argmax(1)
                       == plain_fp32.argmax(1)).mean()
    assert agreement >= plain_agreement - 0.1, (agreement, plain_agreement)
    # All-INT8 would read the pixels straight into the first convolution, past the colour constancy: refused,
    # before any calibration (here there is nothing to calibrate with).
    with pytest.raises(ValueError, match="--color-constancy"):
        quantize_package_model(fp32, tmp_path / "all_int8.onnx", lesion_images[:0], float_blocks=0)


def test_quantize_package_adds_a_verified_int8_model_and_a_report(fp32_package, ham10000_dir, split_csv):
    report = quantize_package(fp32_package, ham10000_dir, split_csv, part="val", calibration_count=21,
                              calibrate_method="MinMax")
    int8 = fp32_package / "skinscan-int8.onnx"
    verify_file(fp32_package, "skinscan-int8.onnx")  # listed in the manifest, hash matches
    assert int8.stat().st_size < 0.4 * (fp32_package / "skinscan.onnx").stat().st_size
    metadata = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert json.loads(metadata["skinscan.labels"]) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    saved = json.loads((fp32_package / "quantization.json").read_text())
    assert saved["evaluated_on"] == "val" and 0 <= saved["top1_agreement"] <= 1
    assert saved["latency"]["fp32"]["median_ms"] > 0 and saved["latency"]["int8"]["median_ms"] > 0
    assert report["int8"]["megabytes"] < report["fp32"]["megabytes"]
    probabilities = onnx_probabilities(int8, np.zeros((2, 96, 128, 3), np.uint8))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-3)
