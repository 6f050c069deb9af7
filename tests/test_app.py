"""Tests of `skinscan app`: the server on its own (headers, MIME types, caching, path traversal, the network
warning, the CLI verb; no browser), the app's resize against Pillow (Node), and the app in headless Chromium
(camera stream, photo upload, parity with the Python runtime, offline, model integrity, nothing leaves
127.0.0.1). Browser tests need `bash scripts/setup_browser.sh` (Chromium + playwright-core) and skip without it.
"""

from __future__ import annotations

import csv
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

from skinscan.cli import main
from skinscan.runtime.app_server import CONTENT_SECURITY_POLICY, AppFiles, app_dir, make_server, network_warning
from skinscan.runtime.classifier import FP32_FILE, Classifier, bundled_package_dir
from skinscan.runtime.manifest import write_manifest
from skinscan.runtime.preprocess import PreprocessConfig, resize_to_input

BROWSER_DIR = Path(__file__).parent / "browser"
DRIVER = BROWSER_DIR / "drive_app.mjs"
CONFIG = PreprocessConfig((96, 128), "center_crop")
PHOTO_CLASSES = ("mel", "nv", "bcc", "bkl")  # one uploaded photo of each
UPLOAD_TOLERANCE = 0.02  # same file, same decoder family, same resize bytes: only ORT WASM vs native kernels differ
CAMERA_TOLERANCE = 0.10  # the camera path goes through YUV 4:2:0 and the browser's own YUV->RGB conversion


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A small random-weight model package (FP32 + manifest): enough for the server and integrity tests."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from skinscan.factory.export import export_onnx, package_metadata
    from skinscan.factory.model import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small").eval()
    folder = tmp_path_factory.mktemp("app_package")
    metadata = package_metadata(CONFIG, model.config.to_json(), 1.0, {"malignant": 0.3})
    export_onnx(model, CONFIG, folder / FP32_FILE, metadata=metadata)
    write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def server(package):
    """`skinscan app` on a free loopback port, in a thread."""
    httpd = make_server("127.0.0.1", 0, package)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(port=httpd.server_address[1], package=package)
    httpd.shutdown()
    httpd.server_close()


def request(server, path: str, method: str = "GET", headers: dict | None = None) -> SimpleNamespace:
    """A raw request: the path goes out exactly as written (no client-side normalisation of `..`)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return SimpleNamespace(status=response.status, headers=response.headers, body=body)


# -------------------------------------------------------------------------------------------------- server
def test_every_response_has_the_isolation_and_csp_headers(server):
    for path in ("/", "/app.js", "/model/metadata.json", "/no-such-file"):
        response = request(server, path)
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin", path
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp", path
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
    csp = dict(directive.split(" ", 1) for directive in CONTENT_SECURITY_POLICY.split("; "))
    assert csp["default-src"] == csp["connect-src"] == csp["worker-src"] == "'self'"
    assert csp["script-src"] == "'self' 'wasm-unsafe-eval'"  # no 'unsafe-eval', no CDN, no analytics host
    assert "http" not in CONTENT_SECURITY_POLICY and "*" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(("path", "content_type", "cache"), [
    ("/", "text/html; charset=utf-8", "no-cache"),
    ("/app.js", "text/javascript; charset=utf-8", "no-cache"),
    ("/sw.js", "text/javascript; charset=utf-8", "no-cache"),
    ("/app.css", "text/css; charset=utf-8", "no-cache"),
    ("/manifest.webmanifest", "application/manifest+json", "no-cache"),
    ("/icons/icon-192.png", "image/png", "no-cache"),
    ("/vendor/onnxruntime-web/ort.wasm.min.mjs", "text/javascript; charset=utf-8", "public, max-age=604800"),
    ("/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", "application/wasm", "public, max-age=604800"),
    ("/vendor/onnxruntime-web/LICENSE", "text/plain; charset=utf-8", "public, max-age=604800"),
    ("/model/skinscan.onnx", "application/octet-stream", "no-cache"),
    ("/model/manifest.json", "application/json", "no-cache"),
    ("/model/metadata.json", "application/json", "no-cache"),
])
def test_mime_types_and_caching(server, path, content_type, cache):
    response = request(server, path, method="HEAD")
    assert response.status == 200, path
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == cache
    assert response.body == b""  # HEAD


def test_model_files_come_from_the_package(server):
    assert request(server, "/model/skinscan.onnx").body == (server.package / FP32_FILE).read_bytes()
    manifest = json.loads(request(server, "/model/manifest.json").body)
    assert FP32_FILE in manifest["files"]
    metadata = json.loads(request(server, "/model/metadata.json").body)
    assert metadata["preprocess"] == {"size": [96, 128], "resize": "center_crop"}
    assert metadata["labels"][0] == "akiec" and metadata["malignant"] == ["akiec", "bcc", "mel"]
    assert metadata["thresholds"]["malignant"] == 0.3
    assert metadata["files"] == {"fp32": FP32_FILE} and metadata["default_precision"] == "fp32"


def test_conditional_requests_get_304(server):
    first = request(server, "/app.js")
    again = request(server, "/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and again.body == b""
    assert again.headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize("path", [
    "/vendor/", "/vendor/onnxruntime-web/", "/icons", "/model/", "/model",  # no directory listings
    "/../pyproject.toml", "/../app_server.py", "/%2e%2e/app_server.py", "/..%2fapp_server.py",
    "/icons/../../app_server.py", "/icons/%2e%2e/%2e%2e/app_server.py", "/model/../../app_server.py",
    "/model/..%2f..%2fapp_server.py", "/model/%2e%2e/skinscan.onnx", "/..\\app_server.py",
    "/%5c..%5capp_server.py", "/index.html%00.png", "/etc/passwd", "//etc/passwd",
    "/model/unlisted.txt", "/model/.hidden", "/.hidden",
])
def test_no_listing_and_no_path_traversal(server, path):
    (server.package / "unlisted.txt").write_text("not in the manifest")
    (server.package / ".hidden").write_text("secret")
    response = request(server, path)
    assert response.status == 404, (path, response.body[:200])


def test_symlinks_out_of_the_app_folder_are_refused(package, tmp_path):
    root = tmp_path / "app"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html>")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    files = AppFiles(package, root=root)
    assert files.resolve("/index.html") is not None
    assert files.resolve("/leak.txt") is None


def test_only_get_and_head(server):
    response = request(server, "/", method="POST")
    assert response.status == 501 and response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_installable_and_every_app_file_is_cached_for_offline_use(server):
    manifest = json.loads(request(server, "/manifest.webmanifest").body)
    assert manifest["display"] == "standalone" and manifest["start_url"] == "./"
    assert {icon["sizes"] for icon in manifest["icons"]} >= {"192x192", "512x512"}
    for icon in manifest["icons"]:
        assert request(server, "/" + icon["src"], method="HEAD").status == 200
    assert b'rel="manifest"' in request(server, "/").body

    app = app_dir()
    worker = (app / "sw.js").read_text()
    listed = set(re.findall(r"'([^']+)'", worker[worker.index("const SHELL"):worker.index("];")]))
    shipped = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    shipped -= {"sw.js", "vendor/onnxruntime-web/LICENSE", "vendor/onnxruntime-web/VERSION.json"}
    assert shipped <= listed, f"not cached for offline use: {sorted(shipped - listed)}"
    assert {path for path in listed if not path.startswith("model/") and path != "./"} <= shipped


def test_ipv6_loopback(package):
    try:
        httpd = make_server("::1", 0, package)
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPConnection("::1", httpd.server_address[1], timeout=10)
        connection.request("HEAD", "/")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_non_loopback_addresses_get_a_warning():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert network_warning(host) is None, host
    for host in ("0.0.0.0", "192.168.1.20", "::", "myhost.local"):
        warning = network_warning(host)
        assert warning and "WARNING" in warning and "network" in warning, host


def test_app_verb_prints_the_url_and_the_warning(package, monkeypatch, capsys):
    from http.server import ThreadingHTTPServer

    def stop(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ThreadingHTTPServer, "serve_forever", stop)
    assert main(["app", "--host", "0.0.0.0", "--port", "0", "--model", str(package)]) == 0
    captured = capsys.readouterr()
    assert "http://0.0.0.0:" in captured.out and "WARNING" in captured.err
    assert main(["app", "--port", "0", "--model", str(package)]) == 0
    captured = capsys.readouterr()
    assert "http://127.0.0.1:" in captured.out and "WARNING" not in captured.err


def test_app_verb_refuses_a_folder_that_is_not_a_package(tmp_path, capsys):
    assert main(["app", "--port", "0", "--model", str(tmp_path)]) == 2
    assert "no model package" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ resize (Node only)
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed; run `bash scripts/setup_browser.sh`")
    return path


@pytest.mark.parametrize(("height", "width", "size", "rule"), [
    (150, 200, (210, 280), "center_crop"),  # HAM10000 copy: upscaling
    (480, 640, (210, 280), "center_crop"),  # the app's camera frames
    (480, 640, (252, 336), "center_crop"),  # the same, at the bundled model's input size
    (720, 1280, (210, 280), "center_crop"),  # landscape, cropped at the sides
    (1280, 720, (210, 280), "center_crop"),  # portrait: Pillow runs the vertical pass first
    (3000, 4000, (210, 280), "center_crop"),  # a phone photo
    (333, 517, (224, 224), "stretch"),
    (100, 90, (210, 280), "stretch"),
    (211, 280, (210, 280), "center_crop"),  # one axis unchanged
    (17, 3001, (96, 128), "center_crop"),  # float32 box rounding matters here
])
def test_app_resize_is_byte_identical_to_pillow(tmp_path, height, width, size, rule):
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgba = np.concatenate([image, np.full((height, width, 1), 255, np.uint8)], axis=-1)
    (tmp_path / "in.rgba").write_bytes(rgba.tobytes())
    cases = [{"rgba": str(tmp_path / "in.rgba"), "width": width, "height": height, "size": list(size),
              "resize": rule, "out": str(tmp_path / "out.rgb")}]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run([node(), str(BROWSER_DIR / "resize_cases.mjs"), str(tmp_path / "cases.json")], check=True,
                   timeout=60)
    expected = resize_to_input(Image.fromarray(image), PreprocessConfig(size, rule))
    actual = np.frombuffer((tmp_path / "out.rgb").read_bytes(), np.uint8).reshape(expected.shape)
    np.testing.assert_array_equal(actual, expected)


# ------------------------------------------------------------------------------------------------ browser
def browser_tools() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed; run `bash scripts/setup_browser.sh`")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core is not installed; run `bash scripts/setup_browser.sh`")
    return node(), chromium


def drive(config: dict, tmp_path: Path, timeout: int = 240) -> dict:
    """Run tests/browser/drive_app.mjs with `config`; its JSON result (failing the test if the run failed)."""
    node_path, chromium = browser_tools()
    config_path = tmp_path / f"{config['scenario']}.json"
    config_path.write_text(json.dumps({"chromium": chromium, **config}))
    result = subprocess.run([node_path, str(DRIVER), str(config_path)], capture_output=True, text=True,
                            timeout=timeout, cwd=BROWSER_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["ok"], document.get("failure", "") + "\n" + result.stderr[-2000:]
    return document


def server_command(package: Path) -> list[str]:
    return [sys.executable, "-m", "skinscan.cli", "app", "--port", "0", "--model", str(package)]


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 5, fps: int = 30) -> np.ndarray:
    """A y4m video (what Chromium's fake camera plays) of one still image; returns the RGB the camera
    delivers, approximately: BT.601 limited-range YUV 4:2:0, converted back."""
    height, width = rgb.shape[:2]
    r, g, b = np.moveaxis(rgb.astype(np.float64) / 255.0, -1, 0)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b

    def subsample(channel):
        return channel.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, subsample(u), subsample(v))]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n")
            for plane in planes:
                f.write(plane.tobytes())
    luma = planes[0].astype(np.float64) - 16
    cb = np.repeat(np.repeat(planes[1].astype(np.float64) - 128, 2, 0), 2, 1)
    cr = np.repeat(np.repeat(planes[2].astype(np.float64) - 128, 2, 0), 2, 1)
    back = np.stack([1.164 * luma + 1.596 * cr, 1.164 * luma - 0.392 * cb - 0.813 * cr, 1.164 * luma + 2.017 * cb], -1)
    return np.clip(np.round(back), 0, 255).astype(np.uint8)


def with_exif_rotation(source: Path, destination: Path) -> Path:
    """The same lesion stored sideways with EXIF orientation 6: both clients must turn it upright."""
    image = Image.open(source)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    image.transpose(Image.Transpose.ROTATE_90).save(destination, quality=95, exif=exif)
    return destination


@pytest.fixture(scope="module")
def bundled() -> Classifier:
    package_dir = bundled_package_dir()
    if not (package_dir / "manifest.json").is_file():
        pytest.skip(f"no bundled model package in {package_dir}; the parity tests need the trained model")
    metadata = json.loads(AppFiles(package_dir).metadata_json)
    return Classifier.load(package_dir, precision=metadata["default_precision"], threads=1)


@pytest.fixture(scope="module")
def app_run(bundled, ham10000_dir, tmp_path_factory) -> SimpleNamespace:
    """One browser session on the bundled model: camera, photo uploads, freeze, then offline."""
    tmp = tmp_path_factory.mktemp("app_run")
    with open(ham10000_dir / "HAM10000_metadata.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["image_id"])
    first_of = {}
    for row in rows:
        first_of.setdefault(row["dx"], ham10000_dir / "images" / f"{row['image_id']}.jpg")
    photos = [first_of[dx] for dx in PHOTO_CLASSES]
    photos.append(with_exif_rotation(photos[0], tmp / "sideways.jpg"))
    # The camera films the candidate lesion the model is surest about, so its top class is not a coin toss.
    candidates = [ham10000_dir / "images" / f"{row['image_id']}.jpg" for row in rows[:24]]
    predictions = bundled.classify_batch(candidates)
    camera_image = candidates[int(np.argmax([p.probability for p in predictions]))]
    camera_rgb = write_y4m(tmp / "camera.y4m", np.asarray(Image.open(camera_image).convert("RGB")))
    document = drive({"scenario": "main", "server": server_command(bundled.package_dir), "y4m": str(tmp / "camera.y4m"),
                      "photos": [str(p) for p in photos]}, tmp)
    return SimpleNamespace(result=document, photos=photos, camera_image=camera_image, camera_rgb=camera_rgb,
                           classifier=bundled)


def max_difference(browser: dict, prediction) -> float:
    return max(abs(browser[code] - p) for code, p in prediction.probabilities.items())


def test_the_page_classifies_the_camera_stream(app_run):
    camera = app_run.result["camera"]
    assert camera["stats"]["frames"] >= 3 and camera["lastResult"]["source"] == "camera"
    reference = app_run.classifier.classify(app_run.camera_image)
    through_yuv = app_run.classifier.classify(app_run.camera_rgb)
    browser = camera["lastResult"]["probabilities"]
    assert camera["lastResult"]["label"] == reference.label
    assert max_difference(browser, through_yuv) <= CAMERA_TOLERANCE
    assert camera["stats"]["crossOriginIsolated"] is True and camera["crossOriginIsolated"] is True


def test_uploaded_photos_match_the_python_runtime(app_run):
    results = app_run.result["photos"]
    assert [r["source"] for r in results] == [p.name for p in app_run.photos]
    for photo, browser in zip(app_run.photos, results, strict=True):
        reference = app_run.classifier.classify(photo)
        assert browser["label"] == reference.label, photo.name
        assert max_difference(browser["probabilities"], reference) <= UPLOAD_TOLERANCE, photo.name
        assert abs(browser["malignantProbability"] - reference.malignant_probability) <= UPLOAD_TOLERANCE
        assert (browser["width"], browser["height"]) == ImageOps.exif_transpose(Image.open(photo)).size
    sideways, upright = results[-1], results[0]
    assert (sideways["width"], sideways["height"]) == (upright["width"], upright["height"])  # EXIF applied


def test_the_explanation_overlay_follows_its_toggle(app_run):
    result = app_run.result
    default = result["overlayDefault"]
    assert default["pressed"] == "false" and default["hidden"] is True and default["disabled"] is False
    reference = app_run.classifier.classify(app_run.camera_image).cam
    for key, source in (("overlayCamera", "camera"), ("overlayPhoto", app_run.photos[-1].name),
                        ("overlayFrozen", "frozen")):
        shown = result[key]
        assert shown["pressed"] == "true" and shown["visible"] is True, key
        assert shown["painted"] > 0, key  # the map has cells above the transparent range
        assert shown["lastCam"]["source"] == source, key
        assert (shown["lastCam"]["h"], shown["lastCam"]["w"]) == reference.shape, key
        assert 0.0 < shown["lastCam"]["max"] <= 1.0, key
        assert np.allclose(shown["rect"], shown["guide"], atol=0.5), key  # exactly over what the model saw
    off = result["overlayOff"]
    assert off["pressed"] == "false" and off["hidden"] is True and off["visible"] is False
    assert result["visibleDisclaimer"] is True


def test_uploaded_photo_maps_match_the_python_runtime(app_run):
    fp32 = Classifier.load(app_run.classifier.package_dir, precision="fp32", threads=1)
    for photo, browser in zip(app_run.photos, app_run.result["photos"], strict=True):
        reference = fp32.classify(photo).cam
        assert reference is not None, "the bundled package has no cam output"
        cam = browser["cam"]
        received = np.asarray(cam["data"], np.float32).reshape(cam["h"], cam["w"])
        assert received.shape == reference.shape, photo.name
        assert np.abs(received - reference).max() <= UPLOAD_TOLERANCE, photo.name
    assert app_run.result["frozen"]["cam"] is not None


def test_a_package_without_cam_keeps_working(package, tmp_path):
    """The small test package is a plain export (outputs `probabilities` and `logits`, no `cam`)."""
    import onnx

    assert "cam" not in [output.name for output in onnx.load(str(package / FP32_FILE)).graph.output]
    photo = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(photo)
    document = drive({"scenario": "photos", "server": server_command(package), "photos": [str(photo)]}, tmp_path)
    (result,) = document["results"]
    assert result["cam"] is None and sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    overlay = document["overlay"]
    assert overlay["disabled"] is True and "no explanation output" in overlay["title"]
    assert overlay["hidden"] is True and overlay["pressed"] == "false"
    assert document["errors"] == []


def test_freeze_screens_the_frozen_frame(app_run):
    assert app_run.result["frozen"]["source"] == "frozen"
    assert app_run.result["frozen"]["label"] == app_run.result["camera"]["lastResult"]["label"]


def test_disclaimer_is_always_visible(app_run):
    assert app_run.result["visibleDisclaimer"] is True
    assert "Screening aid, not a diagnosis" in app_run.result["camera"]["disclaimer"]
    assert "see a dermatologist" in app_run.result["camera"]["disclaimer"]


def test_headers_reach_the_browser(app_run):
    headers = app_run.result["headers"]
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_no_request_leaves_the_machine(app_run):
    origin = app_run.result["url"]  # http://127.0.0.1:PORT/
    assert origin.startswith("http://127.0.0.1:")
    requests = app_run.result["requests"]
    assert any(url.endswith("ort-wasm-simd-threaded.wasm") for url in requests)  # the log is really recording
    outside = [url for url in requests if not (url.startswith(origin) or url.startswith("blob:" + origin[:-1])
                                                or url.startswith("data:"))]
    assert outside == []
    assert app_run.result["errors"] == []


def test_works_offline_after_the_first_visit(app_run):
    offline = app_run.result["offline"]
    assert offline["stats"]["frames"] >= 2 and offline["lastResult"]["source"] == "camera"
    (photo,) = app_run.result["offlinePhotos"]
    online = app_run.result["photos"][0]
    assert photo["label"] == online["label"]
    assert max(abs(photo["probabilities"][c] - p) for c, p in online["probabilities"].items()) < 1e-5


def test_the_app_and_predict_give_the_same_answer_by_default(app_run, capsys):
    """Issue 25: the CLI ran INT8 and the app FP32, so one melanoma got two answers. Both now default to one
    precision: `skinscan predict` with no flags gives the page's answer for the same uploaded photos."""
    from skinscan.runtime.app_server import BROWSER_PRECISION
    from skinscan.runtime.classifier import DEFAULT_PRECISION

    assert BROWSER_PRECISION == DEFAULT_PRECISION
    photos = app_run.photos
    assert main(["predict", *map(str, photos), "--json", "--threads", "1"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"]["precision"] == app_run.result["camera"]["precision"] == DEFAULT_PRECISION
    for photo, cli, browser in zip(photos, document["predictions"], app_run.result["photos"], strict=True):
        assert cli["cannot_assess"] == browser["cannotAssessReason"], photo.name
        if cli["cannot_assess"] is None:
            assert cli["label"] == browser["label"], photo.name
            assert cli["malignant"] == browser["malignant"], photo.name
            assert max(abs(cli["probabilities"][c] - p) for c, p in browser["probabilities"].items()) \
                <= UPLOAD_TOLERANCE, photo.name


@pytest.fixture(scope="module")
def ux_run(bundled, ham10000_dir, tmp_path_factory) -> SimpleNamespace:
    """The app on a 360 px screen: a lesion, then the same lesion in grey (not a lesion photo to the gate)."""
    tmp = tmp_path_factory.mktemp("ux_run")
    with open(ham10000_dir / "HAM10000_metadata.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["image_id"])
    lesion = ham10000_dir / "images" / f"{next(r for r in rows if r['dx'] == 'bkl')['image_id']}.jpg"
    grey = tmp / "grey.png"
    Image.open(lesion).convert("L").save(grey)
    verdict = bundled.classify(grey)
    if verdict.assessable:
        pytest.skip("the bundled package assesses a grey photo: no picture here that it cannot assess")
    (tmp / "reports").mkdir()
    document = drive({"scenario": "ux", "server": server_command(bundled.package_dir), "photos": [str(grey),
                      str(lesion)], "width": 360, "reports": str(tmp / "reports")}, tmp)
    return SimpleNamespace(result=document, python=verdict, lesion=bundled.classify(lesion))


def test_an_image_that_cannot_be_assessed_shows_no_diagnosis(ux_run):
    seen = ux_run.result["unassessable"]
    assert seen["result"]["cannotAssessReason"] == ux_run.python.cannot_assess
    shown = seen["shown"]
    assert shown["verdict"].startswith("Cannot assess this image: ") and "unsure" in shown["classes"].split()
    assert "%" not in shown["resultText"] and seen["topVisible"] is False  # no diagnosis, percentage or bar
    for name in ("Melanoma", "nevus", "keratosis", "carcinoma", "skin cancer:"):
        assert name not in shown["resultText"], name
    # "Show where it looked" was on: still no map and no legend, the button disabled with the reason on screen.
    assert shown["explain"]["disabled"] is True and "cannot be assessed" in shown["explain"]["title"]
    assert shown["camnote"] == "No heat map: this image cannot be assessed."
    assert seen["camVisible"] is False and seen["legendVisible"] is False and shown["camHidden"] is True


def test_results_are_in_plain_words_with_full_names_at_360_px(ux_run):
    seen = ux_run.result["lesion"]
    shown = seen["shown"]
    assert seen["topVisible"] is True and shown["page"]["scrollWidth"] <= shown["page"]["innerWidth"] == 360
    assert shown["result"]["scrollWidth"] <= shown["result"]["clientWidth"]
    names = [code_name for _, code_name, _ in ux_run.lesion.top]
    assert [n["text"] for n in shown["names"]] == names  # the full names, no codes, nothing cut off
    for name in shown["names"]:
        assert name["visible"] and name["scrollWidth"] <= name["clientWidth"], name
    assert "P(" not in shown["resultText"] and "flagged at" not in shown["resultText"]
    expected = ("Some features look like skin cancer: see a dermatologist soon." if ux_run.lesion.malignant else
                "No strong sign of skin cancer in this image; keep watching it and see a doctor if it changes.")
    assert shown["verdict"] == expected


def test_the_heat_map_has_a_legend(ux_run):
    with_map = ux_run.result["lesion"]["withMap"]
    assert with_map["legendVisible"] is True and with_map["shown"]["camHidden"] is False
    assert "red: where the model looked most" in with_map["shown"]["legend"]
    assert "blue: where it looked least" in with_map["shown"]["legend"]


def test_timings_are_behind_the_details_switch(ux_run):
    details = ux_run.result["details"]
    assert details["checked"] is False and details["statsVisible"] is False  # off by default
    assert details["statsVisibleOn"] is True and "ms/frame" in details["statsText"]
    assert details["statsVisibleOff"] is False


def test_the_report_for_the_doctor_downloads_as_a_png(ux_run):
    for key in ("lesion", "unassessable"):
        report = ux_run.result[key]["report"]
        assert report["how"] == "download" and report["suggested"].endswith(".png")
        path = Path(report["path"])
        assert path.stat().st_size == report["bytes"] > 20_000, key
        with Image.open(path) as page:
            assert page.format == "PNG" and page.size == (1240, 1754), key
            pixels = np.asarray(page.convert("RGB"), np.float64)
        assert pixels.std() > 10, key  # drawn, not blank
        panel = pixels[420:680, 660:1140]  # the heat map's box, beside the photo
        colour = (panel.max(-1) - panel.min(-1)).mean()
        if key == "lesion":
            assert colour > 30, colour  # the photo under the jet-coloured map
        else:
            assert panel.mean() > 240, panel.mean()  # an empty box: no map for an image that cannot be assessed
    assert ux_run.result["errors"] == []


def test_a_tampered_model_is_refused(package, tmp_path):
    folder = Path(shutil.copytree(package, tmp_path / "tampered"))
    data = bytearray((folder / FP32_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # a weight byte: ONNX Runtime would load it without complaint
    (folder / FP32_FILE).write_bytes(bytes(data))
    document = drive({"scenario": "tampered", "server": server_command(folder)}, tmp_path)
    assert document["phase"] == "error" and document["error"]["kind"] == "integrity"
    assert document["visible"] and "does not match its manifest" in document["shown"]
    assert document["status"] == "Model refused"


def package_with_metadata(fp32_file: Path, folder: Path, edit) -> Path:
    """A package folder with a copy of `fp32_file` whose metadata `edit(key, parsed value)` rewrote (returning
    the new value, or None to keep it), and its manifest."""
    import onnx

    folder.mkdir()
    model = onnx.load(str(fp32_file))
    for prop in model.metadata_props:
        value = edit(prop.key, json.loads(prop.value))
        if value is not None:
            prop.value = json.dumps(value)
    onnx.save(model, str(folder / FP32_FILE))
    write_manifest(folder)
    return folder


def screen_noise_photo(folder: Path, tmp_path: Path) -> tuple[dict, dict]:
    """Upload one random-pixel photo to the app serving `folder`: (its result, what the page shows)."""
    photo = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(photo)
    document = drive({"scenario": "photos", "server": server_command(folder), "photos": [str(photo)]}, tmp_path)
    (result,) = document["results"]
    return result, document["shown"]


def test_flag_follows_the_package_threshold(package, tmp_path):
    def every_image_flagged(key, value):
        return {"malignant": 0.0} if key == "skinscan.thresholds" else None

    folder = package_with_metadata(package / FP32_FILE, tmp_path / "thresholds", every_image_flagged)
    result, shown = screen_noise_photo(folder, tmp_path)
    assert result["cannotAssess"] is False and result["malignant"] is True  # a package without the gate
    assert shown["verdict"] == "Some features look like skin cancer: see a dermatologist soon."
    assert "flagged" in shown["classes"].split()
    likely = max(("akiec", "bcc", "mel"), key=lambda code: result["probabilities"][code])
    names = json.loads(AppFiles(folder).metadata_json)["label_names"]
    assert shown["malignancy"] == f"Most likely type of skin cancer: {names[likely]}."  # plain words, no P(...)


def test_cannot_assess_follows_the_package_gate(bundled, tmp_path):
    """The app walks the package's `skinscan.assess` checks like skinscan/runtime/assess.py: here every image is "too
    dark" (the line moved above white, the other checks dropped), so a photo is answered with that reason, not a
    diagnosis: no percentage, no list, no flag."""
    if not bundled.has_assess:
        pytest.skip("the bundled package predates the gate")

    def everything_too_dark(key, value):
        if key == "skinscan.assess":
            value["checks"] = [{**value["checks"][0], "below": 300.0}]  # brightness: the "too_dark" check
            assert value["checks"][0]["reason"] == "too_dark"
            return value
        return {"malignant": 0.0} if key == "skinscan.thresholds" else None  # would flag everything, if assessed

    folder = package_with_metadata(bundled.package_dir / FP32_FILE, tmp_path / "gate", everything_too_dark)
    result, shown = screen_noise_photo(folder, tmp_path)
    assert result["cannotAssess"] is True and result["cannotAssessReason"] == "too_dark"
    assert shown["verdict"].startswith("Cannot assess this image: the image is too dark")
    classes = set(shown["classes"].split())
    assert "unsure" in classes and "flagged" not in classes
    assert shown["malignancy"].startswith("No diagnosis is shown") and "%" not in shown["resultText"]
    python = Classifier.load(folder, precision="fp32").classify(tmp_path / "lesion.png")
    assert python.cannot_assess == "too_dark"
