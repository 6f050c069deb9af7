"""Model builders and pretrained-weight resolution (local file + JSON, and the official download code)."""

import hashlib
import http.server
import json
import threading
from functools import partial

import pytest

torch = pytest.importorskip("torch", reason="the model tests need the `train` extra (torch)")

from skinscan.factory.model import (  # noqa: E402
    ARCHITECTURES,
    IMAGENET_MEAN_STD,
    create_model,
    download_state_dict,
    model_from_checkpoint,
    resolve_pretrained,
    shades_of_gray,
)

SHARED_WEIGHTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "weights"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_has_a_seven_class_head(arch):
    model = create_model(arch).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 96, 128) * 255)
    assert logits.shape == (2, 7)
    assert model.config.normalization.mean == IMAGENET_MEAN_STD[0]


def test_local_weights_load_with_their_own_normalisation():
    path = SHARED_WEIGHTS / "mobilenet_v3_small_imagenet.pth"
    if not path.is_file():
        pytest.skip(f"no pretrained weights at {path}")
    model = create_model("mobilenet_v3_small", pretrained=str(path))
    reference = torch.load(path, weights_only=True)
    # Every pretrained tensor but the replaced 1000-way layer is loaded unchanged.
    assert torch.equal(model.net.features[0][0].weight, reference["features.0.0.weight"])
    assert torch.equal(model.net.classifier[0].weight, reference["classifier.0.weight"])
    assert model.net.classifier[-1].out_features == 7
    assert model.config.normalization.mean == (127.5, 127.5, 127.5)
    assert torch.allclose(model.std.flatten(), torch.tensor([127.5] * 3))


def test_local_weights_need_their_json(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(create_model("mobilenet_v3_small", num_classes=1000).net.state_dict(), path)
    with pytest.raises(FileNotFoundError, match="weights.json"):
        resolve_pretrained("mobilenet_v3_small", str(path))
    (tmp_path / "weights.json").write_text(json.dumps({"arch": "mobilenet_v2", "mean": [0] * 3, "std": [1] * 3}))
    with pytest.raises(ValueError, match="--arch mobilenet_v2"):
        resolve_pretrained("mobilenet_v3_small", str(path))


def test_checkpoint_round_trip_keeps_outputs():
    model = create_model("mobilenet_v3_small").eval()
    restored = model_from_checkpoint({"model_config": model.config.to_json(), "model": model.state_dict()})
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_shades_of_gray_removes_a_colour_cast():
    torch.manual_seed(0)
    scene = torch.rand(2, 3, 40, 60) * 150  # no channel saturates under the cast below
    gains = torch.tensor([1.25, 1.0, 0.8])
    gains = gains / gains.square().mean().sqrt()  # a pure colour cast: SoG keeps the illuminant's RMS brightness
    cast = torch.round(scene * gains.view(1, 3, 1, 1))
    before = (scene - cast).abs().mean()
    after = (shades_of_gray(scene) - shades_of_gray(cast)).abs().mean()
    assert before > 8 and after < 1.0
    corrected = shades_of_gray(cast)
    assert torch.equal(corrected, torch.round(corrected)) and corrected.min() >= 0 and corrected.max() <= 255


def test_shades_of_gray_keeps_grey_images_and_survives_black_ones():
    grey = torch.rand(1, 1, 30, 30).expand(1, 3, 30, 30) * 255
    assert torch.equal(shades_of_gray(grey), torch.round(grey))
    black = torch.zeros(1, 3, 8, 8)
    assert torch.equal(shades_of_gray(black), black)


def test_colour_constancy_is_part_of_the_model_and_its_checkpoint():
    model = create_model("mobilenet_v3_small", color_constancy="shades_of_gray").eval()
    restored = model_from_checkpoint({"model_config": model.config.to_json(), "model": model.state_dict()})
    assert restored.config.color_constancy == "shades_of_gray"
    x = torch.rand(1, 3, 64, 64) * torch.tensor([200.0, 150.0, 120.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
        plain = model_from_checkpoint({"model_config": {**model.config.to_json(), "color_constancy": "none"},
                                       "model": model.state_dict()})
        # (a fresh network's outputs hardly depend on its input, so compare what the backbone sees)
        assert not torch.allclose(model.normalize(x), plain.normalize(x))
    legacy = {k: v for k, v in model.config.to_json().items() if k != "color_constancy"}  # before run J
    assert model_from_checkpoint({"model_config": legacy, "model": model.state_dict()}).config.color_constancy == "none"
    with pytest.raises(ValueError, match="colour constancy"):
        create_model("mobilenet_v3_small", color_constancy="grey_world")


@pytest.fixture
def weights_server(tmp_path):
    """A local HTTP server standing in for download.pytorch.org (this machine has no internet)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_official_download_verifies_the_hash(weights_server, tmp_path):
    served, base = weights_server
    state = create_model("mobilenet_v3_small", num_classes=1000).net.state_dict()
    torch.save(state, served / "tmp.pth")
    digest = hashlib.sha256((served / "tmp.pth").read_bytes()).hexdigest()
    (served / "tmp.pth").rename(served / f"mobilenet_v3_small-{digest[:8]}.pth")
    loaded = download_state_dict(f"{base}/mobilenet_v3_small-{digest[:8]}.pth", model_dir=tmp_path / "cache")
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])

    # A file whose content does not match the hash in its name is refused, not loaded.
    genuine = (served / f"mobilenet_v3_small-{digest[:8]}.pth").read_bytes()
    (served / "mobilenet_v3_small-deadbeef.pth").write_bytes(genuine)
    with pytest.raises(RuntimeError, match="cannot download"):
        download_state_dict(f"{base}/mobilenet_v3_small-deadbeef.pth", model_dir=tmp_path / "cache2")


def test_imagenet_uses_torchvisions_official_url(monkeypatch):
    seen = []
    state = create_model("mobilenet_v3_small", num_classes=1000).net.state_dict()
    monkeypatch.setattr("skinscan.factory.model.download_state_dict", lambda url: seen.append(url) or state)
    model = create_model("mobilenet_v3_small", pretrained="imagenet")
    assert seen == ["https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"]
    assert model.config.normalization.mean == IMAGENET_MEAN_STD[0]


def test_shades_of_gray_matches_the_textbook_formula():
    """The implementation's sixth power is two multiplications on the 0-255 scale (cheaper in ONNX Runtime than a
    per-pixel Pow): same result as the Minkowski mean written out, up to a rare rounding at a .5 boundary."""
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 60, 80)).float() * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    illuminant = (pixels / 255.0).pow(6.0).mean(dim=(2, 3), keepdim=True).pow(1.0 / 6.0) + 1e-6
    gains = illuminant.norm(dim=1, keepdim=True) / (illuminant * 3.0 ** 0.5)
    textbook = torch.round(pixels * gains).clamp(0.0, 255.0)
    different = shades_of_gray(pixels) != textbook
    assert different.float().mean() < 1e-3 and (shades_of_gray(pixels) - textbook).abs().max() <= 1.0
