"""Re-fit the "cannot assess" gate of a model package from its ONNX graphs alone (no torch checkpoint).

Why: the gate's lesion distance was a Gaussian over HAM10000's early feature statistics, so it measured
"how far from one clinic's images" and turned away dermoscopy from other devices (docs/RESULTS.md,
"Gate across devices"). What makes an image "a dermoscopic lesion photo" across devices is what this fit
pools and augments for: several sources (HAM10000's train part and the ISIC 2019 images that are not the
external collection), each shown as other dermatoscopes would show it (`device_views`: lower resolution,
slight blur, exposure, contrast and white-balance shifts, a circular vignette, any rotation).

What it changes in a package, and only that: the initializers of the distance (`gate.mean_<block>`,
`gate.whiten_<block>`, the same shapes), one new score column `dermoscopy` in the `assess` output (a
logistic regression, dermoscopic vs an ordinary photo of skin and, with `FitData.negatives`, generic photos of
another source; on the classifier's pooled features by default, read beside its head (in the INT8 graph through
one added DequantizeLinear), or on the block statistics: two initializers and a handful of nodes), the
thresholds in the `skinscan.assess` metadata, and then the `.ort` forms and the manifest. The classifier's nodes
and weights are not touched (only, where a new node needs it, their order), so its outputs stay bit-identical
(tested). The INT8 graph keeps the stem and blocks 1-5 in float (`skinscan.factory.quantize`), so its statistics
equal the FP32 graph's up to float rounding (~1e-3 relative: ORT fuses the two graphs differently; tested) and the
same parameters and thresholds apply to both; its pooled features are the INT8 head's quantized input, so the
dermoscopy score is close to FP32's, not equal (measured: the same refusal rates; docs/RESULTS.md, candidate 5).

The thresholds (`fit_gate_and_thresholds`) are drawn per source on validation lesions, never on the external
collection: by default plain and as device views; with `line="unseen-source"` the distance and dermoscopy lines
are instead drawn for a source the fit did not see (leave-one-source-out, `unseen_source_line`,
`unseen_source_dermoscopy_line`). Measured (docs/RESULTS.md, "Gate across devices", candidates 1-5): the
in-source fits keep HAM10000's test lesions and refuse the non-lesion corpus as required, but still turn away
~10% of the external collection's lesions as "not a lesion"; the unseen-source lines keep the external lesions
(4.2-4.4% turned away) but let 14-26% of the non-lesion corpus through (stained tissue, a fundus, fur, faces),
with or without the generic negatives. So the bundled package keeps its older gate for now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from PIL import Image, ImageFilter
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from skinscan.factory.onnx_metadata import read_metadata, set_metadata
from skinscan.runtime.assess import ASSESS, DERMOSCOPY, AssessSpec
from skinscan.runtime.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import pandas as pd

MEAN, WHITEN = "gate.mean_{}", "gate.whiten_{}"
DERMOSCOPY_WEIGHT, DERMOSCOPY_BIAS = "gate.dermoscopy_weight_{}", "gate.dermoscopy_bias"
DERMOSCOPY_OUTPUT = "gate_dermoscopy_score"
POOLED = "pooled"  # the dermoscopy score's input when it reads the classifier's pooled features
POOLED_OUTPUT = "gate_pooled_features"  # their float form in an INT8 graph (a DequantizeLinear the gate adds)
FEATURES = ("pooled", "block-statistics")  # what the dermoscopy score reads (`fit_parameters`)


class GateGraphError(ValueError):
    """An ONNX graph without the gate this module edits; the message says what to do."""


# ------------------------------------------------------------------------------------- reading the graph
def statistics_tensors(model: onnx.ModelProto) -> dict[int, str]:
    """block -> the name of its [N, 2C] feature statistics: the tensor the distance subtracts `gate.mean_<block>`
    from. Found by the initializer names `skinscan export` gives the gate, so it holds in both precisions."""
    initializers = {init.name for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "Sub" and len(node.input) == 2 and node.input[1] in initializers \
                and node.input[1].startswith("gate.mean_"):
            found[int(node.input[1].rsplit("_", 1)[1])] = node.input[0]
    if not found:
        raise GateGraphError("the graph has no 'cannot assess' gate (no gate.mean_* initializers); export the package "
                             "with `skinscan export` first")
    return dict(sorted(found.items()))


def pooled_features_tensor(model: onnx.ModelProto) -> str:
    """The float [N, C] tensor the classifier's head reads (the pooled features of its last block), found as the
    first input of the head's first Gemm (`classifier.0`). In an INT8 graph that input is quantized: a
    DequantizeLinear (`POOLED_OUTPUT`) is added once, in place, beside the head's QGemm, which it leaves alone."""
    for position, node in enumerate(model.graph.node):
        if node.op_type == "Gemm" and any(name.endswith("classifier.0.weight") for name in node.input):
            return node.input[0]
        if node.op_type == "QGemm" and "classifier.0" in node.name:
            if not any(POOLED_OUTPUT in n.output for n in model.graph.node):
                model.graph.node.insert(position, helper.make_node(
                    "DequantizeLinear", list(node.input[:3]), [POOLED_OUTPUT], name="/gate/pooled/DequantizeLinear"))
            return POOLED_OUTPUT
    raise GateGraphError("the graph has no classifier head (a Gemm or QGemm named classifier.0): is it a skinscan "
                         "model exported by `skinscan export`?")


@dataclass
class GateScores:
    """What the graph computes for a set of images: the block statistics and the `assess` scores."""

    statistics: dict[int, np.ndarray]
    assess: np.ndarray
    names: list[str]  # the `assess` columns, from the metadata
    pooled: np.ndarray | None = None  # the classifier's pooled features [N, C] (caches before them: None)

    def column(self, name: str) -> np.ndarray:
        return self.assess[:, self.names.index(name)]

    def subset(self, mask: np.ndarray) -> GateScores:
        return GateScores({k: v[mask] for k, v in self.statistics.items()}, self.assess[mask], self.names,
                          None if self.pooled is None else self.pooled[mask])

    def features(self, kind: str) -> dict:
        """What the dermoscopy score reads: {"pooled": [N, C]} or the block statistics."""
        if kind == "block-statistics":
            return self.statistics
        if self.pooled is None:
            raise ValueError("the fitting scores have no pooled features (a --cache file written before they "
                             "existed): delete the --cache file to recompute it")
        return {POOLED: self.pooled}


def concatenate(parts: list[GateScores]) -> GateScores:
    pooled = None if any(p.pooled is None for p in parts) else np.concatenate([p.pooled for p in parts])
    return GateScores({k: np.concatenate([p.statistics[k] for p in parts]) for k in parts[0].statistics},
                      np.concatenate([p.assess for p in parts]), parts[0].names, pooled)


def session_with_statistics(model: onnx.ModelProto,
                            threads: int = 1) -> tuple[ort.InferenceSession, dict[int, str], str]:
    """An ORT session whose outputs include the block statistics (extra graph outputs, float, [N, 2C]) and the
    classifier's pooled features (float, [N, C]); with the statistics' names by block and the pooled one's."""
    tensors = statistics_tensors(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # leave the caller's graph alone
    pooled = pooled_features_tensor(model)
    existing = {output.name for output in model.graph.output}
    for name in [*tensors.values(), pooled]:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, tensors, pooled


def gate_scores(model: onnx.ModelProto, images: np.ndarray, batch_size: int = 32, threads: int = 1) -> GateScores:
    """Run uint8 [N, H, W, 3] model inputs through the graph up to the gate (ORT runs only what the requested
    outputs need: the stem, blocks 1-5 and the gate, not the classifier's head)."""
    runner, tensors, pooled_name = session_with_statistics(model, threads)
    names = [*tensors.values(), pooled_name, ASSESS]
    parts = [runner.run(names, {"image": images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    statistics = {block: np.concatenate([p[i] for p in parts]) for i, block in enumerate(tensors)}
    pooled, assess = (np.concatenate([p[i] for p in parts]) for i in (-2, -1))
    return GateScores(statistics, assess, list(read_metadata(model)["skinscan.assess"]["scores"]), pooled)


# ------------------------------------------------------------------------------------ other devices' views
@dataclass(frozen=True)
class DeviceViews:
    """How other dermatoscopes and cameras show the same lesion; each view draws every change independently."""

    low_resolution: float = 0.4        # share of views first shrunk to `low_side` px and scaled back
    low_side: tuple[int, int] = (64, 128)
    blur: float = 0.3                  # share blurred slightly (radius up to `blur_radius` px at input size)
    blur_radius: float = 1.0
    exposure: float = 0.25             # brightness factor in exp(+-exposure)
    contrast: float = 0.25
    white_balance: float = 0.12        # per-channel gain in exp(+-white_balance)
    vignette: float = 0.4              # share with a black circular vignette (radius 0.45-0.75 of the diagonal)
    seed: int = 0


def device_views(images: np.ndarray, config: DeviceViews = DeviceViews()) -> np.ndarray:
    """uint8 [N, H, W, 3] model inputs -> one view of each as another device might take it (same shape)."""
    rng = np.random.default_rng(config.seed)
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    yy, xx = np.mgrid[0:height, 0:width]
    radius_map = np.hypot((yy - (height - 1) / 2), (xx - (width - 1) / 2)) / np.hypot(height, width)
    for i, array in enumerate(images):
        array = np.rot90(array, 2 * rng.integers(2))
        if rng.random() < 0.5:
            array = array[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(array))
        if rng.random() < config.low_resolution:
            side = int(rng.integers(*config.low_side))
            image = image.resize((side, side), Image.Resampling.BILINEAR).resize((width, height),
                                                                                 Image.Resampling.BILINEAR)
        if rng.random() < config.blur:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, config.blur_radius)))
        pixels = np.asarray(image, dtype=np.float32)
        mean = pixels.mean()
        pixels = (pixels - mean) * np.exp(rng.uniform(-config.contrast, config.contrast)) + mean
        pixels = pixels * np.exp(rng.uniform(-config.exposure, config.exposure))
        pixels = pixels * np.exp(rng.uniform(-config.white_balance, config.white_balance, 3))
        if rng.random() < config.vignette:
            pixels = pixels * (radius_map < rng.uniform(0.45, 0.75))[..., None]
        out[i] = np.clip(pixels, 0, 255).round().astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------------ the fit
@dataclass
class GateParameters:
    """The numbers the gate's nodes read: per block a Gaussian (mean, whitening) and the dermoscopy weights."""

    mean: dict[int, np.ndarray]
    whiten: dict[int, np.ndarray]
    dermoscopy_weight: dict = field(default_factory=dict)  # by block, or {POOLED: w} on the pooled features
    dermoscopy_bias: float = 0.0


def fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, whitening W) of a Ledoit-Wolf Gaussian, W scaled so that the median ||(x - mean) W||^2 is 1."""
    x = x.astype(np.float64)
    mean = x.mean(0)
    whiten = np.linalg.cholesky(LedoitWolf().fit(x - mean).precision_)
    distance = (((x - mean) @ whiten) ** 2).sum(1)
    return mean, whiten / np.sqrt(np.median(distance))


REGULARISATION = {"block-statistics": 0.05, "pooled": 0.002}  # C of `fit_dermoscopy`, by its input (RESULTS,
# candidate 4: chosen on leave-one-source-out and held-out generic photos, fit side only)


def fit_dermoscopy(dermoscopic: dict, negatives: list[dict],
                   regularisation: float = 0.05) -> tuple[dict, float]:
    """A logistic regression, dermoscopic (1) vs each group of `negatives` (0: ordinary photos of skin, and
    generic non-lesion photos when given), on the standardised block statistics; returned unstandardised
    (score = sum_b x_b . w_b + bias), so the graph needs no scaling. The positives weigh as much as all
    negatives together, and each negative group as much as every other, so a large generic set does not drown
    the few skin photos.

    Strongly regularised (C = `regularisation`): the ordinary photos are few (see `skinscan.factory.nonlesion`), and
    a weak direction that generalises beats a sharp one that memorises one portrait.
    """
    blocks = sorted(dermoscopic)
    groups = [dermoscopic, *negatives]
    x = np.concatenate([np.concatenate([group[b] for b in blocks], 1) for group in groups]).astype(np.float64)
    counts = [len(group[blocks[0]]) for group in groups]
    y = np.concatenate([np.full(count, float(i == 0)) for i, count in enumerate(counts)])
    weight_of = [0.5] + [0.5 / len(negatives)] * len(negatives)
    sample_weight = np.concatenate([np.full(count, w * len(x) / count) for w, count in zip(weight_of, counts,
                                                                                             strict=True)])
    centre, scale = x.mean(0), x.std(0) + 1e-6
    fitted = LogisticRegression(C=regularisation, max_iter=2000)
    fitted.fit((x - centre) / scale, y, sample_weight=sample_weight)
    weight = fitted.coef_[0] / scale
    bias = float(fitted.intercept_[0] - centre @ weight)
    sizes = np.cumsum([0] + [dermoscopic[b].shape[1] for b in blocks])
    return {b: weight[sizes[i]:sizes[i + 1]] for i, b in enumerate(blocks)}, bias


def fit_parameters(lesions: GateScores, ordinary: GateScores | None, generic: GateScores | None = None,
                   features: str = "pooled") -> GateParameters:
    """The pooled Gaussian per block, and (with ordinary photos) the dermoscopy score on `features` ("pooled":
    the classifier's pooled features; "block-statistics": the distance's statistics), which also learns from
    generic non-lesion photos when given (`skinscan.factory.negatives`)."""
    gaussians = {block: fit_gaussian(x) for block, x in lesions.statistics.items()}
    parameters = GateParameters({b: g[0] for b, g in gaussians.items()}, {b: g[1] for b, g in gaussians.items()})
    if ordinary is not None:
        parameters.dermoscopy_weight, parameters.dermoscopy_bias = fit_dermoscopy_score(lesions, ordinary, generic,
                                                                                       features)
    return parameters


def fit_dermoscopy_score(lesions: GateScores, ordinary: GateScores, generic: GateScores | None = None,
                         features: str = "pooled") -> tuple[dict, float]:
    """`fit_dermoscopy` on `features` of the lesions against the ordinary photos (and the generic ones, when
    given), at that input's REGULARISATION."""
    if features not in FEATURES:
        raise ValueError(f"features {features!r}: choose one of {', '.join(FEATURES)}")
    negatives = [ordinary.features(features)] + ([generic.features(features)] if generic is not None else [])
    return fit_dermoscopy(lesions.features(features), negatives, REGULARISATION[features])


def dermoscopy_score(weight: dict, bias: float, statistics: dict[int, np.ndarray],
                     pooled: np.ndarray | None = None) -> np.ndarray | float:
    """sum_k input_k @ w_k + bias, as the graph's dermoscopy nodes compute it (inputs: blocks or "pooled")."""
    inputs = {**statistics, POOLED: pooled}
    return bias + sum(inputs[key] @ w for key, w in weight.items())


def score_numpy(parameters: GateParameters, statistics: dict[int, np.ndarray],
                pooled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lesion distance, dermoscopy score) as the graph computes them; for choosing designs without a graph."""
    distance = sum((((statistics[b] - parameters.mean[b]) @ parameters.whiten[b]) ** 2).sum(1) for b in parameters.mean)
    dermoscopy = dermoscopy_score(parameters.dermoscopy_weight, parameters.dermoscopy_bias, statistics, pooled)
    return distance, np.zeros(len(distance)) + dermoscopy


def score_sets(parameters: GateParameters, scores: GateScores) -> tuple[np.ndarray, np.ndarray]:
    return score_numpy(parameters, scores.statistics, scores.pooled)


# ------------------------------------------------------------------------------------ writing the graph
def write_parameters(model: onnx.ModelProto, parameters: GateParameters) -> onnx.ModelProto:
    """Put the fitted numbers into the graph (in place): replace the distance's initializers and add (or
    update) the `dermoscopy` column of `assess`. Touches no node the classification outputs depend on."""
    tensors = statistics_tensors(model)
    if set(tensors) != set(parameters.mean):
        raise GateGraphError(f"the graph's gate reads blocks {sorted(tensors)}, the fit has {sorted(parameters.mean)}")
    initializers = {init.name: init for init in model.graph.initializer}

    def put(name: str, value: np.ndarray) -> None:
        tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
        if name in initializers:
            old = initializers[name]
            if list(old.dims) != list(tensor.dims):
                raise GateGraphError(f"{name}: the graph has shape {list(old.dims)}, the fit {list(tensor.dims)}")
            old.CopyFrom(tensor)
        else:
            model.graph.initializer.append(tensor)
            initializers[name] = model.graph.initializer[-1]

    for block in tensors:
        put(MEAN.format(block), parameters.mean[block])
        put(WHITEN.format(block), parameters.whiten[block])
    metadata = read_metadata(model)
    scores = list(metadata["skinscan.assess"]["scores"])
    if parameters.dermoscopy_weight:
        inputs = {POOLED: pooled_features_tensor(model)} if POOLED in parameters.dermoscopy_weight else tensors
        if set(inputs) != set(parameters.dermoscopy_weight):
            raise GateGraphError(f"the fit's dermoscopy score reads {sorted(map(str, parameters.dermoscopy_weight))}, "
                                 f"the graph offers {sorted(map(str, inputs))}")
        if DERMOSCOPY in scores and _dermoscopy_inputs(model) != set(map(str, inputs)):
            raise GateGraphError("the package's dermoscopy score reads other features than this fit; re-export the "
                                 "package (`skinscan export`) and re-fit its gate")
        for key in inputs:
            put(DERMOSCOPY_WEIGHT.format(key), parameters.dermoscopy_weight[key][:, None])
        put(DERMOSCOPY_BIAS, np.array([parameters.dermoscopy_bias]))
        if DERMOSCOPY not in scores:
            _add_dermoscopy_nodes(model, inputs)
            scores.append(DERMOSCOPY)
            spec = {**metadata["skinscan.assess"], "scores": scores}
            set_metadata(model, {"skinscan.assess": json.dumps(spec)})
    return model


def _dermoscopy_inputs(model: onnx.ModelProto) -> set[str]:
    """The keys (blocks or "pooled") of the dermoscopy weights a graph already has."""
    prefix = DERMOSCOPY_WEIGHT.format("")
    return {init.name[len(prefix):] for init in model.graph.initializer if init.name.startswith(prefix)}


def _add_dermoscopy_nodes(model: onnx.ModelProto, tensors: dict) -> None:
    """score = sum_k input_k @ w_k + bias, [N, 1], appended to the Concat that makes `assess`; the inputs are
    the block statistics or the pooled features."""
    nodes, terms = [], []
    for block, name in tensors.items():
        terms.append(f"gate_dermoscopy_term_{block}")
        nodes.append(helper.make_node("MatMul", [name, DERMOSCOPY_WEIGHT.format(block)], [terms[-1]],
                                      name=f"/gate/dermoscopy/MatMul_{block}"))
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"gate_dermoscopy_sum_{i}"],
                                      name=f"/gate/dermoscopy/Add_{i}"))
        total = nodes[-1].output[0]
    nodes.append(helper.make_node("Add", [total, DERMOSCOPY_BIAS], [DERMOSCOPY_OUTPUT], name="/gate/dermoscopy/Bias"))
    concat = next((n for n in model.graph.node if ASSESS in n.output), None)
    if concat is None or concat.op_type != "Concat":
        raise GateGraphError(f"the `{ASSESS}` output is not made by a Concat; re-export the package")
    concat.input.append(DERMOSCOPY_OUTPUT)
    position = list(model.graph.node).index(concat)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(position + offset, node)
    _sort_topologically(model)  # the pooled features come after the gate in the graph's order
    for output in model.graph.output:
        if output.name == ASSESS:  # [N, scores]: the column count is fixed in the declared shape, if any
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                dims[1].dim_value += 1


def _sort_topologically(model: onnx.ModelProto) -> None:
    """Reorder the nodes so that every input is made before it is read, as ONNX requires; stable: a graph already
    in order keeps it, and a node that must wait moves down only as far as its inputs."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        waiting = []
        for node in pending:  # one pass in the present order; what is ready goes out, the rest waits
            if all(name in available for name in node.input):
                ordered.append(onnx.NodeProto.FromString(node.SerializeToString()))
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise GateGraphError("the gate's nodes read a tensor nothing makes; re-export the package")
        pending = waiting
    del model.graph.node[:]
    model.graph.node.extend(ordered)


# ------------------------------------------------------------------------------------------------- data
EXTERNAL_WIDTH = 256  # the ISIC 2017-era images of the extra folder: the external collection, measured only


@dataclass(frozen=True)
class FitData:
    """Where the fit reads its images: only training-side data (see `fit_sets`)."""

    ham_dir: Path
    split_csv: Path
    extra_dir: Path | None = None
    per_source: int = 1500   # lesions drawn from each source's fitting part (plus as many device views)
    ordinary: int = 300      # ordinary photos of skin (crops of the fitting portrait)
    negatives: Path | None = None  # generic non-lesion photos (`skinscan.factory.negatives`) for the dermoscopy score
    generic: int = 1500      # crops of them for the fit (and a fifth as many of the held-out photos)
    ordinary_photos: Path | None = None  # a folder of your own ordinary photos of skin / of lesions without a
    # dermatoscope: crops of its fit part join the portrait's as the dermoscopy score's ordinary negatives
    seed: int = 0
    threads: int = 2


def extra_rows(extra_dir: str | Path) -> pd.DataFrame:
    """The extra folder's metadata without the external collection (`width` 256), with a `part` column:
    a lesion-grouped 80 / 20 split into `fit` and `val` (the same lesion never in both)."""
    import pandas as pd

    path = Path(extra_dir) / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --extra must be the ISIC 2019 extra folder (images/ and "
                                "metadata.csv)")
    rows = pd.read_csv(path)
    missing = {"lesion_id", "image_id", "width"} - set(rows.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}")
    rows = rows[rows.width != EXTERNAL_WIDTH].copy()
    lesions = np.sort(rows.lesion_id.unique())
    held_out = set(np.random.default_rng(0).permutation(lesions)[:len(lesions) // 5])
    rows["part"] = np.where(rows.lesion_id.isin(held_out), "val", "fit")
    return rows


def external_rows(extra_dir: str | Path) -> pd.DataFrame:
    """The external collection (`width` 256): for measuring, never for fitting."""
    import pandas as pd

    rows = pd.read_csv(Path(extra_dir) / "metadata.csv")
    return rows[rows.width == EXTERNAL_WIDTH]


def _sample(rows: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    return rows if not count or len(rows) <= count else rows.sample(n=count, random_state=seed).sort_index()


def _decode(image_dir: Path, image_ids: list[str], config: PreprocessConfig, threads: int, desc: str) -> np.ndarray:
    from skinscan.factory.data import decode_images, image_paths

    return decode_images(image_paths(image_dir, image_ids), config, threads, desc)


def _decode_split_rows(data: FitData, rows: pd.DataFrame, config: PreprocessConfig, desc: str) -> np.ndarray:
    """The split's rows decoded: each image in its own source's folder for a multi-source split, else in
    `data.ham_dir` (a HAM10000-style folder or the images folder itself)."""
    from skinscan.factory.data import decode_images, split_image_paths

    return decode_images(split_image_paths(data.ham_dir, data.split_csv, rows), config, data.threads, desc)


def fit_sets(data: FitData, config: PreprocessConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """uint8 model inputs of every set the fit reads, by name, and the source of each `lesions` image
    (`HAM10000` / `EXTRA`, for the unseen-source line):
    - `lesions`: HAM10000's train part and the extra folder's `fit` part (each up to `per_source`), each image
      plain and as one device view (`device_views`): what the distance and the dermoscopy score learn;
    - `val` / `val_low_resolution`: HAM10000's val part, and the extra folder's `val` part (84-px images),
      and `val_views` / `val_low_resolution_views`, one device view of each: the lesions whose scores the
      thresholds are chosen on (a line must hold for them as other devices would show them, too);
    - `ordinary`: ordinary photos of skin (`skinscan.factory.nonlesion.ordinary_skin_photos`, the fitting portrait).
    Never the HAM10000 test part, never the external collection.
    """
    from skinscan.factory.data import read_split
    from skinscan.factory.nonlesion import ORDINARY_SKIN_FIT, ordinary_skin_photos
    from skinscan.runtime.preprocess import resize_to_input

    split = read_split(data.split_csv)
    train = _sample(split[split.split == "train"], data.per_source, data.seed)
    parts = [_decode_split_rows(data, train, config, "decode train")]
    val = {"val": _decode_split_rows(data, split[split.split == "val"], config, "decode val")}
    if data.extra_dir is not None:
        rows = extra_rows(data.extra_dir)
        extra_images = Path(data.extra_dir) / "images"
        fit = _sample(rows[rows.part == "fit"], data.per_source, data.seed)
        parts.append(_decode(extra_images, fit.image_id.tolist(), config, data.threads, "decode extra fit"))
        held = _sample(rows[rows.part == "val"], data.per_source // 2, data.seed)
        val["val_low_resolution"] = _decode(extra_images, held.image_id.tolist(), config, data.threads,
                                            "decode extra val")
    plain = np.concatenate(parts)
    lesions = np.concatenate([plain, device_views(plain, DeviceViews(seed=data.seed))])
    source = np.concatenate([np.full(len(part), i) for i, part in enumerate(parts)])
    val.update({f"{name}_views": device_views(images, DeviceViews(seed=data.seed + 1)) for name, images in val.items()})
    ordinary = np.stack([resize_to_input(item.image, config)
                         for item in ordinary_skin_photos(ORDINARY_SKIN_FIT, data.ordinary, data.seed)])
    return {"lesions": lesions, **val, "ordinary": ordinary}, np.concatenate([source, source])


NEGATIVE_SETS = ("generic", "generic_held_out")


def _crop_inputs(photos: list, part: str, count: int, data: FitData, config: PreprocessConfig,
                 smallest: float = 0.1) -> np.ndarray:
    """uint8 model inputs of `count` random crops of the `part` photos (`skinscan.factory.negatives.random_crops`)."""
    from skinscan.factory.negatives import random_crops
    from skinscan.runtime.preprocess import resize_to_input

    return np.stack([resize_to_input(crop, config)
                     for crop in random_crops(photos, part, count, data.seed, smallest=smallest)])


def negative_sets(data: FitData, config: PreprocessConfig) -> dict[str, np.ndarray]:
    """uint8 model inputs of the generic non-lesion crops (`skinscan.factory.negatives`): `generic` from the fit
    photos (the dermoscopy score learns from them) and `generic_held_out` from the held-out photos (measured)."""
    from skinscan.factory.negatives import source_photos

    if data.negatives is None:
        return {}
    photos = source_photos(data.negatives)
    return {name: _crop_inputs(photos, part, count, data, config)
            for name, part, count in (("generic", "fit", data.generic),
                                      ("generic_held_out", "held_out", max(1, data.generic // 5)))}


def ordinary_photo_sets(data: FitData, config: PreprocessConfig) -> dict[str, np.ndarray]:
    """uint8 model inputs of crops of `data.ordinary_photos` (`skinscan.factory.negatives.folder_photos`): the
    fit part joins the portrait's crops as ordinary photos; the held-out part measures the fitted gate on
    ordinary photos it never saw (`regate_package`'s report). Crops keep at least half of the photo's side: an
    ordinary photo of a lesion should keep its lesion."""
    from skinscan.factory.negatives import folder_photos

    if data.ordinary_photos is None:
        return {}
    photos = folder_photos(data.ordinary_photos)
    return {name: _crop_inputs(photos, part, count, data, config, smallest=0.5)
            for name, part, count in (("ordinary_photos", "fit", data.ordinary),
                                      ("ordinary_photos_held_out", "held_out", max(1, data.ordinary // 3)))
            if any(photo.part == part for photo in photos)}


# ------------------------------------------------------------------------------------------ the package
@dataclass
class FitScores:
    """The graph's scores of every fitting set (`fit_sets`), computed once with the package's FP32 graph."""

    sets: dict[str, GateScores]
    lesion_source: np.ndarray | None = None  # per `lesions` row: HAM10000 or EXTRA (caches before it: None)

    def save(self, path: Path) -> None:
        arrays = {} if self.lesion_source is None else {"lesions/source": self.lesion_source}
        for name, scores in self.sets.items():
            arrays[f"{name}/assess"] = scores.assess
            arrays.update({f"{name}/{block}": value for block, value in scores.statistics.items()})
            if scores.pooled is not None:
                arrays[f"{name}/{POOLED}"] = scores.pooled
        np.savez(path, names=np.array(next(iter(self.sets.values())).names), **arrays)

    @classmethod
    def load(cls, path: Path) -> FitScores:
        with np.load(path) as archive:
            names = [str(n) for n in archive["names"]]
            sets: dict[str, GateScores] = {}
            source = archive["lesions/source"] if "lesions/source" in archive.files else None
            for key in archive.files:
                if key in ("names", "lesions/source"):
                    continue
                set_name, what = key.split("/")
                scores = sets.setdefault(set_name, GateScores({}, np.empty(0), names))
                if what == "assess":
                    scores.assess = archive[key]
                elif what == POOLED:
                    scores.pooled = archive[key]
                else:
                    scores.statistics[int(what)] = archive[key]
        return cls(sets, source)


def compute_fit_scores(model: onnx.ModelProto, data: FitData, cached: FitScores | None = None) -> FitScores:
    """The scores of every fitting set; with `cached`, only the sets it lacks (the generic crops are a later
    addition, and the lesion sets take the longest)."""
    config = PreprocessConfig.from_json(read_metadata(model)["skinscan.preprocess"])
    if cached is None:
        images, source = fit_sets(data, config)
        fit = FitScores({name: gate_scores(model, array, threads=data.threads) for name, array in images.items()},
                        source)
    else:
        fit = cached
    for missing, make_sets in ((not set(NEGATIVE_SETS) <= set(fit.sets), negative_sets),
                               ("ordinary_photos" not in fit.sets, ordinary_photo_sets)):
        if missing:  # each maker returns nothing when its folder was not given
            fit.sets.update({name: gate_scores(model, array, threads=data.threads)
                             for name, array in make_sets(data, config).items()})
    return fit


FITTED_LINES = ("in-source", "unseen-source")  # lines drawn by `fit_gate_and_thresholds`
LINES = (*FITTED_LINES, "keep")  # "keep": the package's own lines plus the dermoscopy check (`keep_and_add_dermoscopy`)
HAM10000, EXTRA = 0, 1  # the training sources, as `FitScores.lesion_source` numbers them
VAL_SOURCE = {"val": HAM10000, "val_low_resolution": EXTRA}  # each source's plain validation lesions
SOURCE_NAMES = {HAM10000: "ham10000", EXTRA: "isic2019_extra"}


def unseen_source_line(fit: FitScores, parameters: GateParameters, budget: float) -> dict:
    """The distance line drawn for a device the Gaussian did not see (leave-one-source-out).

    Why: a line drawn on validation lesions of the sources the Gaussian was fitted on measures "how far is a new
    image of a *known* device"; deployment meets unknown devices, whose lesions sit farther from every training
    source (docs/RESULTS.md, "Gate across devices"). So for each source S: fit the Gaussian on the other
    source(s) (their device views included, as the final fit), and take r(S) = q(S's val lesions) / q(the
    fitted sources' val lesions), q the (1 - budget) quantile of the distance: how much farther an unseen
    device's lesions lie, in units of the in-source line. The line is q_all * max_S r(S), q_all the largest
    per-source quantile under the final Gaussian `parameters` (fitted on all sources). Plain validation lesions
    only (`VAL_SOURCE`); returns the line and the numbers behind it.
    """
    sources = {name: source for name, source in VAL_SOURCE.items() if name in fit.sets}
    if fit.lesion_source is None:
        raise ValueError("the fitting scores do not say which source each lesion comes from (a cache written before "
                         "--line unseen-source existed): delete the --cache file to recompute it")
    if len(set(sources.values())) < 2 or len(np.unique(fit.lesion_source)) < 2:
        raise ValueError("--line unseen-source needs two training sources: pass --extra (the ISIC 2019 extra folder)")
    lesions = fit.sets["lesions"]

    def quantile(fitted: GateParameters, name: str) -> float:
        return float(np.quantile(score_sets(fitted, fit.sets[name])[0], 1 - budget))

    ratios = {}
    for held_out, source in sources.items():
        fitted = fit_parameters(lesions.subset(fit.lesion_source != source), None)
        in_source = max(quantile(fitted, name) for name, other in sources.items() if other != source)
        ratios[SOURCE_NAMES[source]] = quantile(fitted, held_out) / in_source
    in_all = max(quantile(parameters, name) for name in sources)
    return {"line": in_all * max(ratios.values()), "in_source_quantile": in_all, "ratio_when_unseen": ratios,
            "quantile": 1 - budget}


def ordinary_negatives(fit: FitScores) -> GateScores:
    """The ordinary photos the dermoscopy score learns from: the portrait's crops, and your own ordinary photos'
    fit part when the fit has them (`FitData.ordinary_photos`)."""
    if "ordinary_photos" in fit.sets:
        return concatenate([fit.sets["ordinary"], fit.sets["ordinary_photos"]])
    return fit.sets["ordinary"]


NATIVE_SIZE_VAL = ("val",)  # sources whose images reach the graph at their own size (not the 84-px images)


def unseen_source_dermoscopy_line(fit: FitScores, features: str, line: float, tail: float) -> dict:
    """The dermoscopy line moved to where a source the score was not fitted on keeps (1 - tail) of its plain
    validation lesions (leave-one-source-out, as `unseen_source_line` does for the distance): for each source S
    whose images reach the graph at their own size (`NATIVE_SIZE_VAL`), refit the score without S's lesions and
    take shift(S) = its `tail` quantile on the other sources' val lesions minus that on S's; the line moves down
    by the largest shift. The 84-px source is left out: the runtime refuses such images as too small before the
    graph runs, so its unseen shift would measure a resolution gap no user image presents (docs/RESULTS.md,
    candidate 4)."""
    from skinscan.runtime.assess import tail_value

    shifts = {}
    for held_out in NATIVE_SIZE_VAL:
        source = VAL_SOURCE[held_out]
        others = [name for name, other in VAL_SOURCE.items() if other != source and name in fit.sets]
        weight, bias = fit_dermoscopy_score(fit.sets["lesions"].subset(fit.lesion_source != source),
                                            ordinary_negatives(fit), fit.sets.get("generic"), features)

        def low(name, weight=weight, bias=bias):
            return tail_value(dermoscopy_score(weight, bias, fit.sets[name].statistics, fit.sets[name].pooled), tail)
        shifts[SOURCE_NAMES[source]] = max(0.0, min(low(name) for name in others) - low(held_out))
    return {"line": line - max(shifts.values()), "in_source_line": line, "shift_when_unseen": shifts, "tail": tail}


def fit_gate_and_thresholds(fit: FitScores, line: str = "in-source",
                            features: str = "pooled") -> tuple[GateParameters, dict]:
    """Fit the parameters on `lesions` / `ordinary`, then choose the thresholds on the validation lesions' new
    scores (`choose_thresholds`, per source; the blur line learns from and applies to HAM10000's plain val
    images only: 84-px images and views with a low-resolution or blur step are soft by construction).

    line "in-source" (candidate 2 in docs/RESULTS.md): every line on the validation lesions plain and as device
    views, the distance taking what is left of the rejection budget. "unseen-source" (candidates 3 and 4): the
    quality lines on the plain validation lesions (the views' exposure jitter would move the too-bright line past
    overexposed photos), the distance line from `unseen_source_line` and the dermoscopy line from
    `unseen_source_dermoscopy_line`: both drawn for a device the fit did not see.
    features: what the dermoscopy score reads (`fit_parameters`); it learns from the generic non-lesion photos
    too when the fit has them (`negative_sets`).
    """
    from skinscan.runtime.assess import DERMOSCOPY_TAIL, SCORES, choose_thresholds

    if line not in FITTED_LINES:
        raise ValueError(f"line {line!r}: choose one of {', '.join(FITTED_LINES)} (\"keep\" re-uses the package's "
                         "lines: `keep_and_add_dermoscopy`)")
    parameters = fit_parameters(fit.sets["lesions"], ordinary_negatives(fit), fit.sets.get("generic"), features)
    names = ("val", "val_low_resolution")
    if line == "in-source":
        names += ("val_views", "val_low_resolution_views")
    val_sets = [name for name in names if name in fit.sets]
    val = concatenate([fit.sets[name] for name in val_sets])
    source = np.concatenate([np.full(len(fit.sets[name].assess), i) for i, name in enumerate(val_sets)])
    distance, dermoscopy = score_sets(parameters, val)
    rows = np.column_stack([distance, *[val.column(name) for name in SCORES[1:]], dermoscopy])
    spec = choose_thresholds(rows, scores=[*SCORES, DERMOSCOPY], sharp=source == 0, groups=source)
    if line == "unseen-source":
        unseen = unseen_source_line(fit, parameters, spec["budget"])
        check = next(c for c in spec["checks"] if c["score"] == "lesion_distance")
        check["above"] = max(check["above"], unseen["line"])
        dermoscopy_check = next(c for c in spec["checks"] if c["score"] == DERMOSCOPY)
        moved = unseen_source_dermoscopy_line(fit, features, dermoscopy_check["below"], DERMOSCOPY_TAIL)
        dermoscopy_check["below"] = moved["line"]
        unseen["dermoscopy"] = moved
        judge = AssessSpec.from_metadata(spec)
        sharp = {i: name == "val" for i, name in enumerate(val_sets)}
        spec["val_rejected"] = float(np.mean([not _judge(judge, row, sharp[group]).assessable
                                              for row, group in zip(rows, source, strict=True)]))
        spec["unseen_source"] = unseen
        ratio = max(unseen["ratio_when_unseen"].values())
        spec["rule"] += (f"; then the lesion distance line moved to where a source the Gaussian did not see keeps "
                         f"{unseen['quantile']:.1%} of its lesions (leave-one-source-out, x{ratio:.2f}), and the "
                         f"dermoscopy line to where one the score was not fitted on keeps {1 - DERMOSCOPY_TAIL:.1%} "
                         f"(-{max(moved['shift_when_unseen'].values()):.2f})")
    return parameters, spec


HELD_OUT_SETS = ("generic_held_out", "ordinary_photos_held_out")  # photos of the negatives no fit saw


def held_out_refusals(fit: FitScores, parameters: GateParameters, spec: dict) -> dict:
    """For each held-out negative set the fit has: the share the fitted gate turns away, and why (FP32 scores,
    every check as the runtime applies it). A fit-side figure: the measuring sets are `skinscan gate`'s."""
    from skinscan.runtime.assess import SCORES

    judge = AssessSpec.from_metadata(spec)
    out = {}
    for name in HELD_OUT_SETS:
        if name not in fit.sets:
            continue
        scores = fit.sets[name]
        distance, dermoscopy = score_sets(parameters, scores)
        rows = np.column_stack([distance, *[scores.column(n) for n in SCORES[1:]], dermoscopy])
        reasons = [verdict.reason for verdict in map(judge.judge, rows) if not verdict.assessable]
        out[name] = {"images": len(rows), "rejected_share": len(reasons) / len(rows),
                     "reasons": {reason: reasons.count(reason) for reason in sorted(set(reasons))}}
    return out


def existing_gaussian(model: onnx.ModelProto) -> GateParameters:
    """The distance a package's graph already has (`gate.mean_<block>`, `gate.whiten_<block>`), as parameters."""
    initializers = {init.name: init for init in model.graph.initializer}
    blocks = statistics_tensors(model)
    return GateParameters({b: numpy_helper.to_array(initializers[MEAN.format(b)]).astype(np.float64) for b in blocks},
                          {b: numpy_helper.to_array(initializers[WHITEN.format(b)]).astype(np.float64) for b in blocks})


def keep_and_add_dermoscopy(fit: FitScores, model: onnx.ModelProto, features: str = "pooled") -> tuple[
        GateParameters, dict, float]:
    """line "keep" (candidate 6 in docs/RESULTS.md): the package's distance and every line it has stay as they
    are; only the dermoscopy score is fitted (as `fit_parameters` fits it) and its check added, at the
    QUALITY_TAIL of HAM10000's plain val lesions, the tail each quality line of a HAM10000-fitted gate is drawn
    at. Returns the parameters, the new check and the share of those val lesions the whole gate now turns away
    (the FP32 graph's scores, which the cache holds)."""
    from skinscan.runtime.assess import QUALITY_TAIL, SCORES, tail_value

    parameters = existing_gaussian(model)
    parameters.dermoscopy_weight, parameters.dermoscopy_bias = fit_dermoscopy_score(
        fit.sets["lesions"], ordinary_negatives(fit), fit.sets.get("generic"), features)
    val = fit.sets["val"]
    dermoscopy = score_sets(parameters, val)[1]
    line = tail_value(dermoscopy, QUALITY_TAIL)
    check = {"score": DERMOSCOPY, "below": line, "reason": "not_dermoscopic"}
    spec = read_metadata(model)["skinscan.assess"]
    judge = AssessSpec.from_metadata({**spec, "scores": [*SCORES, DERMOSCOPY],
                                      "checks": [*spec["checks"], check]})
    rows = np.column_stack([val.assess[:, :len(SCORES)], dermoscopy])
    rejected = float(np.mean([not judge.judge(row).assessable for row in rows]))
    return parameters, check, rejected


def _kept_spec(model: onnx.ModelProto, check: dict, val_rejected: float) -> dict:
    """A graph's own `skinscan.assess` (each precision keeps its lines) with the dermoscopy score and check."""
    from skinscan.runtime.assess import QUALITY_TAIL

    spec = read_metadata(model)["skinscan.assess"]
    spec["scores"] = [name for name in spec["scores"] if name != DERMOSCOPY] + [DERMOSCOPY]
    spec["checks"] = [c for c in spec["checks"] if c["score"] != DERMOSCOPY] + [check]
    spec["val_rejected"] = val_rejected
    spec["rule"] = (spec.get("rule", "the package's lines") + f"; plus the dermoscopy check at the {QUALITY_TAIL:.2%} "
                    "tail of HAM10000's val lesions (skinscan regate --line keep)")
    return spec


def _judge(spec: AssessSpec, row: np.ndarray, sharp: bool):
    """A validation row judged as `choose_thresholds` counts it: the blur check only for sharp (HAM10000) rows."""
    if not sharp:
        spec = AssessSpec(spec.scores, tuple(c for c in spec.checks if c.reason != "too_blurry"), spec.min_side,
                          spec.messages, spec.precedence)
    return spec.judge(row)


def regate_package(package_dir: str | Path, data: FitData, cache: Path | None = None, line: str = "in-source",
                   features: str = "pooled") -> dict:
    """Re-fit the gate of every graph in the package (see the module docstring); returns a short report.

    cache: a `.npz` of the fitting sets' scores (`FitScores`): written on the first run, read on later ones
    (the scores depend only on the graph's early blocks, which the re-fit does not change). It is keyed by
    nothing: reuse it only with the same graphs' early blocks and the same `data` options.
    line: how the distance and dermoscopy lines are drawn, "in-source" or "unseen-source"
    (`fit_gate_and_thresholds`); features: what the dermoscopy score reads, "pooled" or "block-statistics".
    """
    from skinscan.factory.ort_mobile import convert_to_ort
    from skinscan.runtime.classifier import FP32_FILE, INT8_FILE
    from skinscan.runtime.manifest import verify_file, write_manifest

    if line not in LINES:
        raise ValueError(f"line {line!r}: choose one of {', '.join(LINES)}")
    if line == "unseen-source" and data.extra_dir is None:
        raise ValueError("--line unseen-source needs two training sources: pass --extra (the ISIC 2019 extra folder)")
    package_dir = Path(package_dir)
    graphs = {precision: package_dir / file for precision, file in (("fp32", FP32_FILE), ("int8", INT8_FILE))
              if (package_dir / file).is_file()}
    if "fp32" not in graphs:
        raise FileNotFoundError(f"{package_dir / FP32_FILE} not found: --model must be a skinscan model package")
    for path in graphs.values():
        verify_file(package_dir, path.name)  # IntegrityError for a tampered or unlisted graph
    models = {precision: onnx.load(str(path)) for precision, path in graphs.items()}
    for model in models.values():
        statistics_tensors(model)  # GateGraphError before decoding thousands of images
        if "skinscan.assess" not in read_metadata(model):
            raise GateGraphError("the package has no skinscan.assess metadata; re-export it with `skinscan export`")
    cached = FitScores.load(Path(cache)) if cache is not None and Path(cache).is_file() else None
    cached_sets = set() if cached is None else set(cached.sets)
    fit = compute_fit_scores(models["fp32"], data, cached)
    if cache is not None and set(fit.sets) != cached_sets:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        fit.save(Path(cache))
    report = {"fit": {name: int(len(scores.assess)) for name, scores in fit.sets.items()}}
    if line == "keep":
        parameters, kept_check, kept_rejected = keep_and_add_dermoscopy(fit, models["fp32"], features)
        kept = {precision: _kept_spec(model, kept_check, kept_rejected) for precision, model in models.items()}
        fitted_spec = kept["fp32"]
    else:
        parameters, fitted_spec = fit_gate_and_thresholds(fit, line, features)
    report["held_out"] = held_out_refusals(fit, parameters, fitted_spec)
    config = PreprocessConfig.from_json(read_metadata(models["fp32"])["skinscan.preprocess"])
    probe = _probe_images(data, config)
    for precision, model in models.items():
        write_parameters(model, parameters)
        spec = dict(kept[precision] if line == "keep" else fitted_spec)
        spec["fit"] = (f"re-fitted by `skinscan regate` on {report['fit']['lesions']} lesion views (HAM10000 train"
                       f"{' + ISIC 2019 extra, not the external collection' if data.extra_dir else ''}, each plain "
                       f"and as another device's view), {report['fit']['ordinary']} ordinary photos of skin"
                       + (f" and {report['fit']['generic']} crops of generic photos (Debian's wallpapers and "
                          "backgrounds)" if "generic" in report["fit"] else ""))
        if line == "keep":  # the distance and lines are the package's own: say so, and what was added
            own = read_metadata(model)["skinscan.assess"].get("fit", "the package's own fit")
            spec["fit"] = (f"{own}; the dermoscopy score fitted by `skinscan regate --line keep` on "
                           + spec["fit"].split(" on ", 1)[1])
        if precision == "int8":
            spec["precision"] = "int8"
        set_metadata(model, {"skinscan.assess": json.dumps(spec)})
        report[precision] = {"val_rejected": spec["val_rejected"], "checks": spec["checks"]}
        if "unseen_source" in spec:
            report["unseen_source"] = spec["unseen_source"]
        check_graph_scores(model, parameters, probe)
    for precision, model in models.items():
        onnx.checker.check_model(model)
        onnx.save(model, str(graphs[precision]))
        if graphs[precision].with_suffix(".ort").is_file():
            convert_to_ort(graphs[precision])
    write_manifest(package_dir)
    return report


def refresh_messages(package_dir: str | Path) -> dict[str, str]:
    """Rewrite only the "cannot assess" messages of a package's graphs (the `messages` of `skinscan.assess`)
    with this version's `skinscan.runtime.assess.MESSAGES`, then the `.ort` forms and the manifest: the words a
    user reads, without re-fitting anything. Every score, line and classifier output stays as it was."""
    from skinscan.factory.ort_mobile import convert_to_ort
    from skinscan.runtime.assess import MESSAGES
    from skinscan.runtime.classifier import FP32_FILE, INT8_FILE
    from skinscan.runtime.manifest import verify_file, write_manifest

    package_dir = Path(package_dir)
    graphs = [package_dir / file for file in (FP32_FILE, INT8_FILE) if (package_dir / file).is_file()]
    if not graphs:
        raise FileNotFoundError(f"{package_dir / FP32_FILE} not found: --model must be a skinscan model package")
    for path in graphs:
        verify_file(package_dir, path.name)
    for path in graphs:
        model = onnx.load(str(path))
        spec = read_metadata(model).get("skinscan.assess")
        if spec is None:
            raise GateGraphError(f"{path.name} has no skinscan.assess metadata; re-export it with `skinscan export`")
        spec["messages"] = {**spec.get("messages", {}), **MESSAGES}
        set_metadata(model, {"skinscan.assess": json.dumps(spec)})
        onnx.save(model, str(path))
        if path.with_suffix(".ort").is_file():
            convert_to_ort(path)
    write_manifest(package_dir)
    return dict(MESSAGES)


def _probe_images(data: FitData, config: PreprocessConfig, count: int = 16) -> np.ndarray:
    from skinscan.factory.data import read_split

    split = read_split(data.split_csv)
    return _decode_split_rows(data, split[split.split == "val"].head(count), config, "decode probe")


def check_graph_scores(model: onnx.ModelProto, parameters: GateParameters, images: np.ndarray) -> None:
    """The edited graph computes what the fit meant: on a few real lesions its `lesion_distance` and `dermoscopy`
    columns equal the numpy definitions applied to its own block statistics (float32 against float64)."""
    scores = gate_scores(model, images)
    distance, dermoscopy = score_sets(parameters, scores)
    if not (np.allclose(scores.column("lesion_distance"), distance, rtol=1e-3, atol=1e-3)
            and np.allclose(scores.column(DERMOSCOPY), dermoscopy, rtol=1e-3, atol=1e-3)):
        raise GateGraphError("the edited graph's gate scores differ from the fitted definition; nothing was written")
