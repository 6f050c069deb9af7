"""Model builders and pretrained-weight resolution (local file + JSON, and the official download code)."""

import hashlib
import http.server
import json
import threading
from functools import partial

import pytest

torch = pytest.importorskip("torch", reason="the model tests need the `train` extra (torch)")

from skinscan.model import (  # noqa: E402
    ARCHITECTURES,
    IMAGENET_MEAN_STD,
    create_model,
    download_state_dict,
    model_from_checkpoint,
    resolve_pretrained,
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
    monkeypatch.setattr("skinscan.model.download_state_dict", lambda url: seen.append(url) or state)
    model = create_model("mobilenet_v3_small", pretrained="imagenet")
    assert seen == ["https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"]
    assert model.config.normalization.mean == IMAGENET_MEAN_STD[0]
