"""`skinscan app`: serve the offline web app (`skinscan/app/`) and one model package over local HTTP.

Standard library plus the torch-free runtime (to read and check the model's metadata); no new dependency.

Design note (app server)
------------------------
The server is deliberately dumb: every screening happens in the browser (onnxruntime-web, WASM), so it
only hands out static files, with exactly the headers the app needs:
- COOP `same-origin` + COEP `require-corp` (+ CORP `same-origin`): the page is cross-origin isolated,
  which is what lets WASM use threads (SharedArrayBuffer);
- a Content-Security-Policy that allows only this origin (no CDN, no analytics, nothing can phone home),
  `'wasm-unsafe-eval'` for the WASM runtime, camera frames as `blob:`/`mediastream:`;
- MIME types the browser insists on (`.wasm`, `.mjs`, `.webmanifest`), `nosniff`;
- `no-cache` (revalidate with Last-Modified/ETag, cheap 304s) for everything but the vendored runtime,
  whose 14 MB are cached for a week: the service worker keeps all of it for offline use anyway.
No directory listings, nothing outside the app folder (path traversal is refused), and from the model
package only `manifest.json` and the files that manifest lists. `/model/metadata.json` is the model's
ONNX metadata as plain JSON (read here with ONNX Runtime and validated against the package contract), so
the app needs no protobuf parser; the app checks the model's sha256 against `manifest.json` itself.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import posixpath
import shutil
import socket
import sys
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from skinscan.runtime.classifier import FP32_FILE, INT8_FILE, ModelPackageError, bundled_package_dir
from skinscan.runtime.manifest import MANIFEST, read_manifest

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The precision the browser runs: FP32. In onnxruntime-web's WASM build our INT8 graph is slower (about 29 vs
# 18 ms a frame) and its QLinear kernels round differently from native x86 ones, so browser and Python INT8
# disagree by up to 0.58 in probability; browser FP32 matches Python FP32 to 1e-6 (docs/APP.md).
BROWSER_PRECISION = "fp32"
BROWSER_FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "worker-src 'self'",
    "connect-src 'self'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob: mediastream:",
    "style-src 'self'",
    "manifest-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".ort": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
NO_CACHE = "no-cache"
VENDOR_CACHE = "public, max-age=604800"
VENDOR_PREFIX = "/vendor/"
MODEL_PREFIX = "/model/"
METADATA_URL = MODEL_PREFIX + "metadata.json"
CHUNK = 1 << 16


def app_dir() -> Path:
    """The app's static files, shipped inside the `skinscan` distribution (`skinscan/app/`)."""
    return Path(str(resources.files("skinscan") / "app"))


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it resolves to a reachable address
        return False


def model_metadata(package_dir: str | Path | None = None) -> dict:
    """What the app needs to know about a model package, as JSON: labels, resize rule, thresholds, files.

    The metadata is read from the ONNX file with ONNX Runtime and validated by `Classifier` (the same
    contract checks as the Python runtime), so a broken package fails here, at `skinscan app`, with a
    message, rather than in a phone's browser. The sha256 check is left to the app (it must check the
    bytes it actually received).
    """
    import onnxruntime as ort

    from skinscan.runtime.classifier import Classifier

    package_dir = Path(package_dir).expanduser() if package_dir is not None else bundled_package_dir()
    if not (package_dir / MANIFEST).is_file():
        raise ModelPackageError(f"no model package at {package_dir} (no {MANIFEST}); pass --model DIR, a folder "
                                f"from `skinscan export` with {FP32_FILE} and {MANIFEST}")
    files = {precision: name for precision, name in BROWSER_FILES.items() if (package_dir / name).is_file()}
    if not files:
        raise ModelPackageError(f"{package_dir} has neither {FP32_FILE} nor {INT8_FILE}")
    default = BROWSER_PRECISION if BROWSER_PRECISION in files else next(iter(files))
    path = package_dir / files[default]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT's own exception types
        raise ModelPackageError(f"ONNX Runtime cannot load {path}: {error}") from None
    classifier = Classifier(session, path)
    height, width = classifier.config.size
    return {
        "labels": list(classifier.labels),
        "label_names": classifier.label_names,
        "malignant": list(classifier.malignant_codes),
        "preprocess": {"size": [height, width], "resize": classifier.config.resize},
        "thresholds": classifier.thresholds,
        "assess": classifier.metadata.get("skinscan.assess"),  # the "cannot assess" rule (skinscan/runtime/assess.py)
        "version": classifier.version,
        "temperature": classifier.metadata.get("skinscan.temperature"),
        "input": "image",
        "output": "probabilities",
        "files": files,
        "default_precision": default,
    }


class AppFiles:
    """Maps a URL path to what is served: a file under the app folder, a model package file, or metadata.

    Everything else is a 404: directories, dotfiles, anything that resolves outside its root (`..`,
    encoded `%2e%2e`, backslashes, symlinks), model-folder files the manifest does not list.
    """

    def __init__(self, package_dir: str | Path | None = None, root: str | Path | None = None):
        self.root = Path(root or app_dir()).resolve()
        self.package_dir = (Path(package_dir).expanduser() if package_dir is not None
                            else bundled_package_dir()).resolve()
        self.metadata_json = json.dumps(model_metadata(self.package_dir), indent=1).encode()
        self.model_files = set(read_manifest(self.package_dir).get("files", {})) | {MANIFEST}
        if not (self.root / "index.html").is_file():
            raise FileNotFoundError(f"the web app is missing from {self.root} (no index.html); reinstall skinscan")

    def resolve(self, url_path: str) -> tuple[Path | bytes, str, str] | None:
        """URL path -> (file path or bytes, content type, cache control), or None for 404."""
        path = urllib.parse.unquote(url_path)
        if "\x00" in path or "\\" in path or not path.startswith("/"):
            return None
        path = posixpath.normpath(path)  # collapses "..", "."; a result above "/" stays "/"
        if path == "/":
            path = "/index.html"
        if path == METADATA_URL:
            return self.metadata_json, MIME_TYPES[".json"], NO_CACHE
        if path.startswith(MODEL_PREFIX):
            name = path[len(MODEL_PREFIX):]
            if name not in self.model_files:
                return None
            return self._file(self.package_dir, name, NO_CACHE)
        cache = VENDOR_CACHE if path.startswith(VENDOR_PREFIX) else NO_CACHE
        return self._file(self.root, path.lstrip("/"), cache)

    @staticmethod
    def _file(root: Path, relative: str, cache: str) -> tuple[Path, str, str] | None:
        if any(part.startswith(".") for part in relative.split("/")):
            return None
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate, MIME_TYPES.get(candidate.suffix.lower(), "application/octet-stream"), cache


class AppRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD of static files with the app's headers; conditional requests answered with 304."""

    files: AppFiles  # set on the subclass made by `make_server`

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():  # on every response, errors included
            self.send_header(name, value)
        super().end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        found = self.files.resolve(urllib.parse.urlsplit(self.path).path)
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        source, content_type, cache = found
        if isinstance(source, bytes):
            length, modified, etag = len(source), None, None
        else:
            stat = source.stat()
            length, modified = stat.st_size, email.utils.formatdate(stat.st_mtime, usegmt=True)
            etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
            if self.headers.get("If-None-Match") == etag or (
                    "If-None-Match" not in self.headers and self.headers.get("If-Modified-Since") == modified):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("ETag", etag)
                self.send_header("Cache-Control", cache)
                self.end_headers()
                return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", cache)
        if etag is not None:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
        self.end_headers()
        if not body:
            return
        try:
            if isinstance(source, bytes):
                self.wfile.write(source)
            else:
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, CHUNK)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed or reloaded mid-download: nothing to report

    def version_string(self) -> str:
        return "skinscan"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's signature)
        pass  # a phone reloading the page is not news; errors reach the user in the page itself


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                package_dir: str | Path | None = None) -> ThreadingHTTPServer:
    """A bound server, not yet serving; port 0 picks a free port (see `server.server_address`)."""
    handler = type("BoundAppRequestHandler", (AppRequestHandler,), {"files": AppFiles(package_dir)})
    server_class = ThreadingHTTPServer
    if ":" in host:  # an IPv6 address such as ::1
        server_class = type("ThreadingHTTPServerV6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


def network_warning(host: str) -> str | None:
    """The warning printed when the server is reachable from other machines, or None on loopback."""
    if is_loopback(host):
        return None
    return (f"WARNING: listening on {host}, so any device on your network can open this page. Nothing is "
            "uploaded (screening runs in the browser), but browsers only allow the camera on https:// or "
            "localhost: put it behind HTTPS, or use --host 127.0.0.1 with a USB port forward "
            "(adb reverse tcp:PORT tcp:PORT).")


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, package_dir: str | Path | None = None) -> int:
    """Serve until interrupted; prints the URL (and the network warning). Returns the exit status."""
    server = make_server(host, port, package_dir)
    warning = network_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    files = server.RequestHandlerClass.files
    print(f"skinscan app: http://{shown}:{bound_port}/ (model {files.package_dir}; Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("skinscan app: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
