"""The on-device runtime: a model package run by ONNX Runtime, any image in, a `Prediction` out.

Design note (runtime)
---------------------
Torch-free on purpose. What ships to a user's machine is numpy, Pillow and onnxruntime (tens of MB)
instead of torch (GBs), it starts in well under a second, and it runs the very graph the browser and the
native apps run, so all clients share one model file and one set of numbers. This module imports only
those three libraries and our `labels`, `preprocess` and `manifest` modules (never `model`, `train` or
`export`); a test imports it in a fresh interpreter with torch blocked.

What is verified at load, before ONNX Runtime parses a byte of the model:
- the chosen ONNX file is listed in the package's `manifest.json` and its sha256 matches: a corrupted or
  tampered file raises `IntegrityError`. The bytes that are hashed are the bytes handed to ONNX Runtime,
  so the file cannot be swapped between the check and the load;
- the contract the clients rely on (DESIGN.md, "The model package contract"): input `image` uint8
  `[N, H, W, 3]` matching the metadata's input size, an output `probabilities` with one column per label,
  and the metadata keys this runtime needs (labels, names, malignant codes, resize rule, thresholds).
  A missing or malformed key raises `ModelPackageError` naming it.

Decoding and resizing use `skinscan.runtime.preprocess` (EXIF orientation, colour modes, JPEG draft decoding,
size limits), i.e. the exact rule the model was trained with, read from the package's metadata.

Packages from `skinscan export` also output `cam`, the Grad-CAM map of the predicted class computed inside the
graph (docs/EXPLAIN.md); `classify` returns it as `Prediction.cam`. Older packages without it keep working
(`cam` is None, `has_cam` False).
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skinscan.runtime.assess import ASSESS, AssessSpec, AssessSpecError, Verdict
from skinscan.runtime.manifest import IntegrityError, read_manifest, verify_file
from skinscan.runtime.preprocess import ImageSource, PreprocessConfig, load_image, resize_to_input

FP32_FILE = "skinscan.onnx"
INT8_FILE = "skinscan-int8.onnx"
PRECISIONS = ("auto", "int8", "fp32")
# One default for every client, so that the same image gets the same answer from `skinscan predict`, the
# library and the web app (issue 25: INT8 in the CLI, FP32 in the app, two different top classes). FP32,
# because the browser must run it: onnxruntime-web's WASM INT8 kernels are slower there and round differently
# from native x86 ones (docs/APP.md). INT8 stays one flag away (`precision="int8"`, or "auto": int8 when present).
DEFAULT_PRECISION = "fp32"
PRECISION_FILES = {"int8": INT8_FILE, "fp32": FP32_FILE}
INPUT_NAME = "image"
PROBABILITIES = "probabilities"
CLASSIFICATION_OUTPUTS = (PROBABILITIES, "logits")  # every package's outputs, in this order
CAM = "cam"  # optional output: Grad-CAM of the predicted class, float [N, h, w] in [0, 1]
REQUIRED_METADATA = ("skinscan.labels", "skinscan.label_names", "skinscan.malignant", "skinscan.preprocess",
                     "skinscan.thresholds")
TOP_K = 3
NOT_SHOWN_NOTE = "not shown to users: the image cannot be assessed, so the network's output is no diagnosis"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

__all__ = ["Classifier", "IntegrityError", "ModelPackageError", "Prediction", "bundled_package_dir", "find_images"]


class ModelPackageError(Exception):
    """A model package that cannot be used (not found, wrong file, broken contract); the message says why."""


@dataclass
class Prediction:
    """One image's result. `top` holds the 3 likeliest (code, name, probability), most likely first."""

    top: list[tuple[str, str, float]]
    probabilities: dict[str, float]  # every label, in the model's output order
    label: str
    malignant_probability: float  # the sum over the malignant diagnoses
    malignant: bool  # malignant_probability >= the package's "malignant" threshold
    source: str | None = field(default=None)
    # Grad-CAM of the top class on the model's last feature map [h, w], in [0, 1]; None when the package
    # has no `cam` output. It covers the model's input, i.e. the image after the package's resize rule.
    cam: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Why the image cannot be assessed ("too_blurry", "not_a_lesion", ...; see skinscan.runtime.assess), or None. When
    # set, the diagnosis fields above are what the network said but must not be shown as a result.
    cannot_assess: str | None = None
    cannot_assess_message: str | None = None
    assessment: dict[str, float] | None = field(default=None, compare=False)  # the gate's scores

    @property
    def assessable(self) -> bool:
        return self.cannot_assess is None

    @property
    def name(self) -> str:
        return self.top[0][1]

    @property
    def probability(self) -> float:
        return self.top[0][2]

    def to_dict(self, include_cam: bool = False) -> dict:
        """JSON-friendly: plain str/float/bool, `top` as a list of {code, name, probability}.

        An image that cannot be assessed gets no diagnosis: its diagnosis fields are null (`top` empty) and the
        network's raw output moves under `developer`, with a note, so that nothing that reads the usual fields
        can show it to a user as a result. include_cam: add `cam` as nested lists (rows of the map), or None;
        off by default to keep documents small (under `developer` for an image that cannot be assessed).
        """
        diagnosis = {
            "label": self.label,
            "name": self.name,
            "probability": self.probability,
            "top": [{"code": code, "name": name, "probability": p} for code, name, p in self.top],
            "probabilities": dict(self.probabilities),
            "malignant_probability": self.malignant_probability,
            "malignant": self.malignant,
        }
        if include_cam:
            diagnosis["cam"] = None if self.cam is None else self.cam.tolist()
        document = {"source": self.source, **diagnosis, "cannot_assess": self.cannot_assess,
                    "cannot_assess_message": self.cannot_assess_message, "assessment": self.assessment}
        if not self.assessable:
            document.update({key: None for key in diagnosis}, top=[])
            document["developer"] = {**diagnosis, "note": NOT_SHOWN_NOTE}
        return document


def bundled_package_dir() -> Path:
    """The model package shipped inside the `skinscan` distribution (`skinscan/models/`)."""
    return Path(str(resources.files("skinscan") / "models"))


def _resolve_model_file(path: str | Path | None, precision: str | None) -> Path:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if path is None:
        package_dir = bundled_package_dir()
        if not any((package_dir / name).is_file() for name in PRECISION_FILES.values()):
            raise ModelPackageError(f"no bundled model package in {package_dir}; pass --model DIR (a model package "
                                    "folder from `skinscan export`), or Classifier.load(path)")
    else:
        path = Path(path).expanduser()
        if path.is_file():
            if path.suffix != ".onnx":
                raise ModelPackageError(f"{path} is not an .onnx file; pass a model package folder or one of its "
                                        ".onnx files")
            wanted = PRECISION_FILES.get(precision)
            if wanted is not None and path.name != wanted:
                raise ModelPackageError(f"{path} was given with precision {precision!r}, whose file is {wanted}; "
                                        "pass the package folder, or precision 'auto'")
            return path
        if not path.is_dir():
            raise ModelPackageError(f"no model package at {path}: expected a folder with {FP32_FILE} and "
                                    "manifest.json (from `skinscan export`), or an .onnx file inside one")
        package_dir = path
    if precision is None:  # the default: DEFAULT_PRECISION, or the package's only file
        default = PRECISION_FILES[DEFAULT_PRECISION]
        others = [name for name in PRECISION_FILES.values() if (package_dir / name).is_file()]
        name = default if (package_dir / default).is_file() or not others else others[0]
    elif precision == "auto":
        name = INT8_FILE if (package_dir / INT8_FILE).is_file() else FP32_FILE
    else:
        name = PRECISION_FILES[precision]
    if not (package_dir / name).is_file():
        raise ModelPackageError(f"{package_dir} has no {name} (precision {precision!r}); its files: "
                                f"{', '.join(sorted(p.name for p in package_dir.iterdir())) or 'none'}")
    return package_dir / name


def _verified_bytes(model_file: Path) -> bytes:
    """The model file's bytes, after checking them against the package manifest (IntegrityError if not)."""
    package_dir, name = model_file.parent, model_file.name
    verify_file(package_dir, name)  # clear messages: no manifest, unlisted file, missing file, mismatch
    data = model_file.read_bytes()
    expected = read_manifest(package_dir)["files"][name]["sha256"]
    if hashlib.sha256(data).hexdigest() != expected:  # the file changed after verify_file read it
        raise IntegrityError(f"{model_file} does not match its manifest (it changed while loading); reinstall "
                             "skinscan or re-export the package")
    return data


def _session_options(threads: int | None) -> ort.SessionOptions:
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1 (or None for all cores), got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0 = ONNX Runtime's default: one thread per physical core
    options.inter_op_num_threads = 1  # the graph is a chain; parallelism is within operators
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no optimiser chatter on the user's terminal
    return options


def _parse_metadata(custom: dict[str, str]) -> dict:
    metadata = {}
    for key, value in custom.items():
        if not key.startswith("skinscan."):
            continue
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            raise ModelPackageError(f"model metadata {key} is not valid JSON: {value[:80]!r}") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelPackageError(f"the model's metadata lacks {', '.join(missing)}; not a skinscan model package "
                                "(re-export it with `skinscan export`)")
    return metadata


class Classifier:
    """A loaded model package. `Classifier.load()` then `classify(path_or_bytes_or_image)` -> Prediction.

    Thread-safe for concurrent `classify` calls (ONNX Runtime sessions are).
    """

    def __init__(self, session: ort.InferenceSession, path: Path | None = None):
        self.session = session
        self.path = path
        self.package_dir = path.parent if path is not None else None
        self.precision = {FP32_FILE: "fp32", INT8_FILE: "int8"}.get(path.name, "custom") if path else "custom"
        self.metadata = _parse_metadata(session.get_modelmeta().custom_metadata_map)
        self._read_contract()

    @classmethod
    def load(cls, path: str | Path | None = None, precision: str | None = None,
             threads: int | None = None) -> Classifier:
        """Load a model package: a folder, an `.onnx` file inside one, or None for the bundled package.

        precision: "fp32" (`skinscan.onnx`), "int8" (`skinscan-int8.onnx`), "auto" (int8 when present) or None,
        the default: DEFAULT_PRECISION (what the web app runs) when the package has it, and an `.onnx` file
        given by path as it is.
        threads: ONNX Runtime intra-op threads; None uses all cores.
        Raises ModelPackageError (not found, broken contract) or IntegrityError (manifest mismatch).
        """
        model_file = _resolve_model_file(path, precision)
        data = _verified_bytes(model_file)
        try:
            session = ort.InferenceSession(data, sess_options=_session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own pybind exception types (Fail, InvalidProtobuf, ...)
            raise ModelPackageError(f"ONNX Runtime cannot load {model_file}: {error}") from None
        return cls(session, model_file)

    def _read_contract(self) -> None:
        meta = self.metadata
        labels, names, malignant = meta["skinscan.labels"], meta["skinscan.label_names"], meta["skinscan.malignant"]
        if not isinstance(labels, list) or not labels or len(set(labels)) != len(labels):
            raise ModelPackageError(f"model metadata skinscan.labels must be a list of unique codes, got {labels!r}")
        if not isinstance(names, dict) or any(code not in names for code in labels):
            raise ModelPackageError(f"model metadata skinscan.label_names must name every label in {labels}")
        if not isinstance(malignant, list) or any(code not in labels for code in malignant):
            raise ModelPackageError(f"model metadata skinscan.malignant must list codes among {labels}")
        try:
            config = PreprocessConfig.from_json(meta["skinscan.preprocess"])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ModelPackageError(f"model metadata skinscan.preprocess is malformed ({error!r}); expected "
                                    "{'size': [H, W], 'resize': 'center_crop' | 'stretch'}") from None
        thresholds = meta["skinscan.thresholds"]
        if not isinstance(thresholds, dict) or not isinstance(thresholds.get("malignant"), (int, float)):
            raise ModelPackageError("model metadata skinscan.thresholds lacks a numeric 'malignant' threshold")
        self.labels: tuple[str, ...] = tuple(labels)
        self.label_names: dict[str, str] = {code: str(names[code]) for code in labels}
        self.malignant_codes: tuple[str, ...] = tuple(malignant)
        self.config = config
        self.thresholds: dict = thresholds
        self.threshold = float(thresholds["malignant"])
        self.version = meta.get("skinscan.version")
        self._malignant_index = np.array([self.labels.index(code) for code in malignant], dtype=np.int64)

        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        image = inputs.get(INPUT_NAME)
        height, width = config.size
        if image is None or image.type != "tensor(uint8)" or len(image.shape) != 4:
            found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs.values())
            raise ModelPackageError(f"the model's input must be `image` uint8 [N, H, W, 3]; found {found}")
        dims = zip(image.shape[1:], (height, width, 3), ("height", "width", "channels"), strict=True)
        for actual, expected, what in dims:
            if isinstance(actual, int) and actual != expected:
                raise ModelPackageError(f"the model's input {what} is {actual} but its metadata says {expected}")
        if PROBABILITIES not in outputs:
            raise ModelPackageError(f"the model has no `{PROBABILITIES}` output; found {', '.join(outputs)}")
        columns = outputs[PROBABILITIES].shape[-1]
        if isinstance(columns, int) and columns != len(self.labels):
            raise ModelPackageError(f"the model outputs {columns} probabilities but its metadata has "
                                    f"{len(self.labels)} labels")
        self.has_cam = CAM in outputs and len(outputs[CAM].shape) == 3
        self.assess_spec: AssessSpec | None = None
        if "skinscan.assess" in meta:
            if ASSESS not in outputs:
                raise ModelPackageError(f"the model's metadata has skinscan.assess but the graph has no `{ASSESS}` "
                                        "output; re-export the package")
            try:
                self.assess_spec = AssessSpec.from_metadata(meta["skinscan.assess"])
            except AssessSpecError as error:
                raise ModelPackageError(str(error)) from None

    def __repr__(self) -> str:
        height, width = self.config.size
        return (f"Classifier({self.path}, precision={self.precision!r}, input={height}x{width} "
                f"{self.config.resize}, version={self.version!r})")

    # ------------------------------------------------------------------------------------------ inference
    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Decode and resize one image by this model's rule -> uint8 (H, W, 3). Raises ImageError."""
        return self.decode(image)[0]

    def decode(self, image: ImageSource) -> tuple[np.ndarray, tuple[int, int]]:
        """(the model input, the decoded image's (width, height)) for the "too small" check.

        The decoded size is after JPEG draft decoding, which never goes below the model's input size, so a
        picture is only ever "too small" when it really is.
        """
        decoded = load_image(image, min_size=self.config.size)
        return resize_to_input(decoded, self.config), decoded.size

    @property
    def has_assess(self) -> bool:
        return self.assess_spec is not None

    def _model_input(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = (*self.config.size, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected uint8 images of shape [N, {expected[0]}, {expected[1]}, 3], got "
                             f"{images.dtype} {list(images.shape)} (one image: array[None]; decode and resize "
                             "with Classifier.preprocess)")
        return np.ascontiguousarray(images)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """The low-level path: uint8 [N, H, W, 3] RGB, already resized -> probabilities float32 [N, labels]."""
        images = self._model_input(images)
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.session.run([PROBABILITIES], {INPUT_NAME: images})[0]

    def explain_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Like `predict_arrays`, plus the Grad-CAM maps [N, h, w] of each image's top class (None without `cam`).

        The graph computes the map on every run anyway (ONNX Runtime runs all nodes), so fetching it is free.
        """
        outputs = self.run_arrays(images)
        return outputs[PROBABILITIES], outputs.get(CAM)

    def run_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output this package has for uint8 [N, H, W, 3] images: probabilities, and cam / assess if present.

        ONNX Runtime computes all the graph's nodes on every run anyway, so fetching them all costs nothing.
        """
        images = self._model_input(images)
        names = [PROBABILITIES, *([CAM] if self.has_cam else []), *([ASSESS] if self.has_assess else [])]
        if len(images) == 0:
            return {PROBABILITIES: np.zeros((0, len(self.labels)), dtype=np.float32)}
        return dict(zip(names, self.session.run(names, {INPUT_NAME: images}), strict=True))

    def assess(self, scores: np.ndarray, image_size: tuple[int, int] | None = None) -> Verdict | None:
        """One image's `assess` row -> the package's verdict (None for packages without the gate)."""
        return None if self.assess_spec is None else self.assess_spec.judge(scores, image_size)

    def prediction(self, probabilities: np.ndarray, source: str | None = None,
                   cam: np.ndarray | None = None, verdict: Verdict | None = None) -> Prediction:
        """One row of `predict_arrays` (and of the maps of `explain_arrays`, the `assess` verdict) -> a Prediction."""
        row = np.asarray(probabilities, dtype=np.float64)
        order = np.argsort(-row, kind="stable")[:TOP_K]
        top = [(self.labels[i], self.label_names[self.labels[i]], float(row[i])) for i in order]
        malignant_probability = float(row[self._malignant_index].sum())
        return Prediction(
            top=top,
            probabilities={code: float(p) for code, p in zip(self.labels, row, strict=True)},
            label=top[0][0],
            malignant_probability=malignant_probability,
            malignant=malignant_probability >= self.threshold,
            source=source,
            cam=cam,
            cannot_assess=None if verdict is None else verdict.reason,
            cannot_assess_message=None if verdict is None else verdict.message,
            assessment=None if verdict is None else verdict.scores,
        )

    def classify_arrays(self, images: np.ndarray, sources: Sequence[str | None],
                        image_sizes: Sequence[tuple[int, int] | None] | None = None) -> list[Prediction]:
        """Already-resized uint8 [N, H, W, 3] -> one Prediction per image, with its map when the package has `cam`
        and its "cannot assess" verdict when it has the gate. image_sizes: each image's decoded (width, height)
        before resizing, for the "too small" check (None: unknown, not checked)."""
        outputs = self.run_arrays(images)
        count = len(outputs[PROBABILITIES])
        cams = outputs.get(CAM, [None] * count)
        scores = outputs.get(ASSESS, [None] * count)
        sizes = image_sizes if image_sizes is not None else [None] * count
        rows = zip(outputs[PROBABILITIES], sources, cams, scores, sizes, strict=True)
        return [self.prediction(row, source, cam, None if score is None else self.assess(score, size))
                for row, source, cam, score, size in rows]

    def classify(self, image: ImageSource, source: str | None = None) -> Prediction:
        """A path, bytes, PIL image or numpy array -> Prediction. `source` defaults to the path, if any."""
        if source is None and isinstance(image, (str, Path)):
            source = str(image)
        array, size = self.decode(image)
        return self.classify_arrays(array[None], [source], [size])[0]

    def classify_batch(self, images: Iterable[ImageSource], batch_size: int = 16,
                       sources: Sequence[str | None] | None = None) -> list[Prediction]:
        """Classify many images, running the model on batches of `batch_size`. Raises on the first bad image."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        images = list(images)
        if sources is None:
            sources = [str(image) if isinstance(image, (str, Path)) else None for image in images]
        elif len(sources) != len(images):
            raise ValueError(f"got {len(sources)} sources for {len(images)} images")
        predictions = []
        for start in range(0, len(images), batch_size):
            decoded = [self.decode(image) for image in images[start:start + batch_size]]
            arrays = np.stack([array for array, _ in decoded])
            predictions += self.classify_arrays(arrays, sources[start:start + batch_size], [s for _, s in decoded])
        return predictions


# ------------------------------------------------------------------------------------------------ inputs
def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images_under(folder: Path) -> list[Path]:
    # Hidden files and folders are skipped: macOS `._name.jpg` resource forks and `.thumbnails` are not photos.
    return sorted(p for p in folder.rglob("*")
                  if _is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursively, image suffixes only, sorted) and glob patterns to image paths.

    A file named explicitly is kept whatever its suffix (decoding will tell). Glob patterns are expanded
    here (recursive `**` included) for shells that did not. Returns (images in order, without duplicates;
    [(path, reason)] for arguments that matched nothing).
    """
    images: list[Path] = []
    not_found: list[tuple[str, str]] = []
    for argument in paths:
        path = Path(argument).expanduser()
        if path.is_dir():
            found = _images_under(path)
            if not found:
                not_found.append((str(argument), f"no images ({' '.join(IMAGE_SUFFIXES)}) in this folder"))
        elif path.is_file():
            found = [path]
        elif glob.has_magic(str(argument)):
            found = []
            for match in sorted(glob.glob(str(path), recursive=True)):
                match = Path(match)
                found += _images_under(match) if match.is_dir() else [match] if _is_image_file(match) else []
            if not found:
                not_found.append((str(argument), "the pattern matches no image"))
        else:
            found = []
            not_found.append((str(argument), "no such file or folder"))
        images += found
    seen: set[Path] = set()
    unique = []
    for image in images:
        key = image.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(image)
    return unique, not_found
