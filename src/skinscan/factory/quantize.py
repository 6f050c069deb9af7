"""Static INT8 quantization that is really faster than FP32 on a CPU, and the graph edits that make it so.

`quantize_static` alone makes MobileNetV3 *slower* in INT8 (profiled on ORT 1.32, 1 thread, batch 1):
1. the input normalisation (Sub/Div) runs on the NHWC tensor after ORT's layout transform, ~0.75 ms each;
2. every HardSwish and squeeze-excite HardSigmoid becomes DequantizeLinear -> HardSigmoid (float) ->
   QuantizeLinear -> QLinearMul: four kernels where FP32 fuses the activation into its convolution.
The edits below remove both, each exact up to quantization rounding (see the functions' docstrings):
- `feed_pixels_to_stem`: the uint8 pixels ARE a quantized tensor (scale 1, zero point 128) of
  `pixels - 128`; the normalisation is folded into the first convolution's weights and bias beforehand.
- `fuse_hardsigmoid_gates`: hardsigmoid(y) = clip(y + 3, 0, 6) / 6, and clipping to [0, 6] is exactly what
  a uint8 output with scale 6/255 and zero point 0 does for free. For a squeeze-excite gate, the +3 goes
  into the int32 bias of the convolution before it; for a HardSwish, one saturating QLinearAdd(x, 3) makes
  the gate. The gate's uint8 values are then read with scale 1/255 (the /6) by the QLinearMul.

Calibration: MinMax over 256 class-stratified training images. Measured on the validation split (run B;
FP32 0.723 balanced accuracy), top-1 agreement with FP32 / balanced accuracy: MinMax 0.928 / 0.709,
Percentile 99.99 0.907 / 0.687, 99.999 0.923 / 0.665, 99.9999 0.929 / 0.681; MinMax over 64 or 1024
images 0.887 / 0.674 and 0.899 / 0.679. (Balanced accuracy moves a point per rare-class flip: agreement is
the steadier signal.) Keeping the squeeze-excite convolutions in float (their ReLU outputs are the
worst-quantized tensors by `qdq_loss_debug`) gave 0.930 / 0.712 but cost 0.6 ms (float convs plus
per-run weight dequantization, which ORT does not constant-fold), so everything is INT8 but the
temperature and the softmax at the very end.

The explanation output `cam` (Grad-CAM of the predicted class, see `skinscan.factory.export.PackagedModel`) stays
float too: the nodes only it needs (`explanation_only_nodes`) are excluded from quantization. They read the
dequantized last feature map and head pre-activation, and the head's weights through DequantizeLinear of
the int8 copies the quantized classifier holds (the quantizer does that itself), so the branch adds no float
weights: 2.4 MB for the first head layer alone, more than the whole INT8 model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from skinscan.factory.data import load_split_images
from skinscan.factory.metrics import classification_metrics
from skinscan.factory.onnx_metadata import read_metadata, set_metadata
from skinscan.factory.ort_mobile import convert_to_ort
from skinscan.labels import HAM10000, LabelSet
from skinscan.runtime.assess import ASSESS
from skinscan.runtime.classifier import CAM, CLASSIFICATION_OUTPUTS, FP32_FILE, INT8_FILE
from skinscan.runtime.manifest import verify_file, write_manifest
from skinscan.runtime.preprocess import PreprocessConfig

# Mixed precision: `skinscan quantize` keeps the stem and blocks 1-5 (stride 2-16, 16-40 channels) in float.
# Measured (docs/RESULTS.md): there INT8 kernels are slower than FP32 on x86 (the 3-channel stem 2.5x, the
# depthwise convolutions 1.35x), so float costs no time and saves their quantization error (test balanced
# accuracy 0.697 vs 0.685 all-INT8), and the "cannot assess" gate reads blocks 4-5: float keeps its scores
# identical to FP32's instead of inflated by quantization noise (which cost 13 points of non-lesion rejection).
FLOAT_BLOCKS = 6
PIXEL_ZERO_POINT = 128  # the stem reads pixels as (pixel - 128) * 1.0
_DELETED = "__deleted__"


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds real training images (uint8 NHWC, already resized) to the calibrator, a few at a time."""

    def __init__(self, images: np.ndarray, input_name: str = "image", batch_size: int = 1):
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self._batches: Iterator | None = None

    def get_next(self) -> dict | None:
        if self._batches is None:
            self._batches = iter(range(0, len(self.images), self.batch_size))
        start = next(self._batches, None)
        return None if start is None else {self.input_name: self.images[start:start + self.batch_size]}

    def rewind(self) -> None:
        self._batches = None


class GraphIndex:
    """Producers, consumers and initializers of an ONNX graph by tensor name: what the edits look up."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.refresh()

    def refresh(self) -> None:
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def value(self, name: str) -> np.ndarray:
        """A constant tensor: an initializer, or one behind Identity / Constant nodes (the exporter emits both)."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":
            return self.value(node.input[0])
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        raise KeyError(f"{name} is not a constant of the graph")

    def set_value(self, name: str, array: np.ndarray) -> None:
        self.initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            tensor = numpy_helper.from_array(array, name)
            self.graph.initializer.append(tensor)
            self.initializers[name] = self.graph.initializer[-1]
        return name

    def remove_nodes(self, nodes: list[onnx.NodeProto]) -> None:
        """Drop nodes. Marks first, then rebuilds the list once: rebuilding copies every node, so node
        objects held by the caller are stale afterwards (call this last in an edit)."""
        for node in nodes:
            node.op_type = _DELETED
        kept = [n for n in self.graph.node if n.op_type != _DELETED]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        self.refresh()


def explanation_only_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes that only the `cam` output needs: its ancestors that no classification output depends on.

    Found structurally, so it holds before and after quantization; empty for a graph without `cam`.
    """
    return side_output_nodes(model, CAM)


def gate_only_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes that only the `assess` output ("cannot assess" scores) needs; empty for a graph without it.

    They stay float: the image-quality scores read the raw pixels, and the Mahalanobis distance squares
    differences of feature statistics, which uint8 steps would swamp. Float in both precisions, they add the
    same time to each (mostly the quality scores; docs/RESULTS.md, "INT8 speed").
    """
    return side_output_nodes(model, ASSESS)


def side_output_nodes(model: onnx.ModelProto, output: str) -> list[onnx.NodeProto]:
    """The ancestors of `output` that no classification output depends on (empty if the graph lacks it)."""
    nodes = model.graph.node
    producer = {name: i for i, node in enumerate(nodes) for name in node.output}

    def ancestors(outputs) -> set[int]:
        found, pending = set(), [producer[name] for name in outputs if name in producer]
        while pending:
            i = pending.pop()
            if i not in found:
                found.add(i)
                pending += [producer[name] for name in nodes[i].input if name in producer]
        return found

    if output not in {o.name for o in model.graph.output}:
        return []
    only = ancestors([output]) - ancestors(CLASSIFICATION_OUTPUTS)
    return [node for i, node in enumerate(nodes) if i in only]


# ------------------------------------------------------------------------------ FP32 edits (before PTQ)
def fold_normalization_into_stem(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast -> Sub(mean) -> Div(std) -> Conv  becomes  Cast -> Sub(128) -> Conv' (exact in the interior).

    Conv(W, (x - m) / s) + b = Conv(W / s, x - 128) + b + sum(W / s * (128 - m)). Only the zero padding of
    the first convolution differs: it now pads with pixel value 128 instead of the mean (127.5 for our
    weights), a 0.4% change of the normalised value on the one-pixel border.
    """
    index = GraphIndex(model)
    sub, div, conv = _normalisation_chain(index)
    mean = index.value(sub.input[1]).reshape(-1)
    std = index.value(div.input[1]).reshape(-1)
    weight = index.value(conv.input[1])
    bias = index.value(conv.input[2]) if len(conv.input) > 2 else np.zeros(weight.shape[0], np.float32)
    folded = weight / std.reshape(1, -1, 1, 1)
    bias = bias + (folded * (PIXEL_ZERO_POINT - mean).reshape(1, -1, 1, 1)).sum(axis=(1, 2, 3))
    index.set_value(conv.input[1], folded.astype(np.float32))
    bias_name = index.add_initializer(conv.name + "_folded_bias", bias.astype(np.float32))
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    sub.input[1] = index.add_initializer("pixel_zero_point_float", np.array(PIXEL_ZERO_POINT, np.float32))
    conv.input[0] = sub.output[0]
    index.remove_nodes([div])
    return model


def _follow(index: GraphIndex, first: onnx.NodeProto, op_types: tuple[str, ...]) -> list[onnx.NodeProto] | None:
    """`first` and the nodes after it when each is the only consumer of the one before and has the next of
    `op_types`; None where the graph branches or differs."""
    chain = [first]
    for op_type in op_types:
        consumers = index.consumers.get(chain[-1].output[0], [])
        if len(consumers) != 1 or consumers[0].op_type != op_type:
            return None
        chain.append(consumers[0])
    return chain


def _normalisation_chain(index: GraphIndex) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]:
    """The input normalisation Sub(mean) -> Div(std) -> first Conv. Found by shape, not by position: the
    pixels also feed the "cannot assess" quality scores, whose nodes may come first."""
    for sub in (n for n in index.graph.node if n.op_type == "Sub"):
        chain = _follow(index, sub, ("Div", "Conv"))
        if chain is not None:
            return tuple(chain)
    raise ValueError("unexpected graph: the input normalisation is not Sub -> Div -> Conv")


def _pixels_to_stem(index: GraphIndex, after_sub: tuple[str, ...]) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """The input Cast and its chain Sub -> `after_sub` into the first convolution; a clear error where there is
    none (a model trained with --color-constancy computes that convolution's input in float)."""
    cast = next(n for n in index.graph.node if n.op_type == "Cast")
    chains = [_follow(index, sub, after_sub) for sub in index.consumers[cast.output[0]] if sub.op_type == "Sub"]
    chains = [chain for chain in chains if chain is not None]
    if not chains:
        raise ValueError(f"unexpected graph: expected Cast -> Sub -> {' -> '.join(after_sub)} at the input; a model "
                         "trained with --color-constancy computes its first convolution's input in float, so keep "
                         "the first blocks float (the default --float-blocks) or pass --no-graph-edits")
    return cast, chains[-1]


def require_pixels_at_stem(model: onnx.ModelProto) -> None:
    """Refuse, before minutes of calibration, a graph that `feed_pixels_to_stem` would refuse after them: with
    the normalisation folded, the first convolution must read the cast pixels through Sub(128) alone."""
    _pixels_to_stem(GraphIndex(model), ("Conv",))


# ----------------------------------------------------------------------------- INT8 edits (after PTQ)
def feed_pixels_to_stem(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast -> Sub(128) -> QuantizeLinear -> QLinearConv  becomes  uint8 pixels -> QLinearConv.

    The pixels already are the quantized form of (pixel - 128) with scale 1 and zero point 128, so the
    float round trip goes; the stem's int32 bias is re-expressed for the new input scale.
    """
    index = GraphIndex(model)
    cast, (sub, quantize, conv) = _pixels_to_stem(index, ("QuantizeLinear", "QLinearConv"))
    old_scale = float(index.value(conv.input[1]))
    weight_scale = index.value(conv.input[4])
    scale_name = index.add_initializer("pixel_scale", np.array(1.0, np.float32))
    zero_name = index.add_initializer("pixel_zero_point", np.array(PIXEL_ZERO_POINT, np.uint8))
    if len(conv.input) > 8:
        bias = index.value(conv.input[8]).astype(np.float64) * old_scale * weight_scale
        new_bias = np.round(bias / (1.0 * weight_scale)).astype(np.int32)
        conv.input[8] = index.add_initializer(conv.name + "_pixel_bias", new_bias)
    conv.input[0], conv.input[1], conv.input[2] = cast.input[0], scale_name, zero_name
    # The float pixels stay when the "cannot assess" quality scores read them too.
    index.remove_nodes([sub, quantize] + ([] if len(index.consumers[cast.output[0]]) > 1 else [cast]))
    return model


def fuse_hardsigmoid_gates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Replace each DequantizeLinear -> HardSigmoid -> QuantizeLinear by an integer gate (module docstring).

    Returns the edited model and a count of the squeeze-excite and HardSwish gates rewritten.
    """
    index = GraphIndex(model)
    counts = {"squeeze_excite": 0, "hardswish": 0}
    gate_scale = index.add_initializer("gate_scale_6_over_255", np.array(6.0 / 255.0, np.float32))
    read_scale = index.add_initializer("gate_scale_1_over_255", np.array(1.0 / 255.0, np.float32))
    zero = index.add_initializer("gate_zero_point", np.array(0, np.uint8))
    three_scale = index.add_initializer("three_scale", np.array(3.0 / 255.0, np.float32))
    three = index.add_initializer("three_quantized", np.array(255, np.uint8))
    doomed: list[onnx.NodeProto] = []
    for hard_sigmoid in [n for n in model.graph.node if n.op_type == "HardSigmoid"]:
        attributes = {a.name: helper.get_attribute_value(a) for a in hard_sigmoid.attribute}
        if not (np.isclose(attributes.get("alpha", 0.2), 1 / 6) and np.isclose(attributes.get("beta", 0.5), 0.5)):
            continue  # not the hardsigmoid of MobileNetV3 (x/6 + 1/2)
        dequantize = index.producer.get(hard_sigmoid.input[0])
        consumers = index.consumers.get(hard_sigmoid.output[0], [])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(consumers) != 1 \
                or consumers[0].op_type != "QuantizeLinear":
            continue
        quantize = consumers[0]
        quantized_input = dequantize.input[0]
        producer = index.producer.get(quantized_input)
        only_for_gate = len(index.consumers[quantized_input]) == 1
        if producer is not None and producer.op_type == "QLinearConv" and only_for_gate and len(producer.input) > 8:
            # Squeeze-excite: the conv itself emits the gate. +3 in the int32 bias, output scale 6/255.
            accumulator_scale = index.value(producer.input[1]) * index.value(producer.input[4])
            bias = index.value(producer.input[8]).astype(np.int64) + np.round(3.0 / accumulator_scale).astype(np.int64)
            producer.input[8] = index.add_initializer(producer.name + "_gate_bias", bias.astype(np.int32))
            producer.input[6], producer.input[7] = gate_scale, zero
            gate = quantized_input
            counts["squeeze_excite"] += 1
            doomed += [dequantize, hard_sigmoid, quantize]
        else:
            # HardSwish: gate = saturating uint8 (x + 3) with scale 6/255.
            gate = quantized_input + "_hardsigmoid_gate"
            model.graph.node.append(helper.make_node(
                "QLinearAdd", [quantized_input, dequantize.input[1], dequantize.input[2], three, three_scale, zero,
                               gate_scale, zero], [gate], name=f"hardswish_gate_{counts['hardswish']}",
                domain="com.microsoft"))
            counts["hardswish"] += 1
            doomed += [hard_sigmoid, quantize] + ([dequantize] if only_for_gate else [])
        for consumer in index.consumers.get(quantize.output[0], []):
            if consumer.op_type != "QLinearMul":
                raise ValueError(f"unexpected consumer {consumer.op_type} of a hardsigmoid gate")
            for position in (0, 3):
                if consumer.input[position] == quantize.output[0]:
                    consumer.input[position:position + 3] = [gate, read_scale, zero]
    index.remove_nodes(doomed)
    _remove_unused_dequantize(index)
    _topological_sort(model)
    return model, counts


def integer_cam_matmuls(model: onnx.ModelProto) -> int:
    """In the cam branch, MatMul(g, DequantizeLinear(W_q, s, 0, axis=0))  becomes  an integer GEMV on W_q.

    The branch's alpha = g W1 reads the 1024x576 head weight, which the INT8 model holds in int8. Through
    DequantizeLinear that is 590k weights dequantized on every run (ORT does not constant-fold it): 0.3 ms,
    more than the multiplication itself. Instead g W = (g * s) W_q, with the per-row scales s moved onto g:
    each image's g * s is rounded to 8 bits over its own range (step = max|g * s| / 127, zero point 128),
    multiplied by the int8 weights as stored (MatMulInteger), and scaled back by the step. Per image, not
    DynamicQuantizeLinear's one range per batch: an image's map must not depend on the rest of its batch.
    The only new error is that 8-bit rounding of g. Returns how many MatMuls were rewritten.
    """
    index = GraphIndex(model)
    inverse_127 = index.add_initializer("cam_inverse_127", np.array(1 / 127, np.float32))
    smallest_step = index.add_initializer("cam_smallest_step", np.array(1e-30, np.float32))  # g = 0: no 0/0
    one = index.add_initializer("cam_one", np.array(1.0, np.float32))
    zero_point = index.add_initializer("cam_zero_point_128", np.array(128, np.uint8))
    doomed = []
    for matmul in [n for n in explanation_only_nodes(model) if n.op_type == "MatMul"]:
        dequantize = index.producer.get(matmul.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" \
                or dequantize.input[0] not in index.initializers:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in dequantize.attribute}
        weights, scale, zero = (index.value(name) for name in dequantize.input[:3])
        if weights.dtype != np.int8 or weights.ndim != 2 or np.any(zero != 0) \
                or (scale.size > 1 and attributes.get("axis", 1) != 0):
            continue  # not a symmetric int8 matrix with one scale per row
        n = matmul.name or f"cam_matmul_{len(doomed)}"
        model.graph.node.extend([
            helper.make_node("Mul", [matmul.input[0], dequantize.input[1]], [n + "_scaled"], name=n + "_scale"),
            helper.make_node("Abs", [n + "_scaled"], [n + "_abs"], name=n + "_abs"),
            helper.make_node("ReduceMax", [n + "_abs"], [n + "_range"], name=n + "_range", axes=[-1], keepdims=1),
            helper.make_node("Mul", [n + "_range", inverse_127], [n + "_raw_step"], name=n + "_raw_step"),
            helper.make_node("Max", [n + "_raw_step", smallest_step], [n + "_step"], name=n + "_step"),
            helper.make_node("Div", [n + "_scaled", n + "_step"], [n + "_in_steps"], name=n + "_in_steps"),
            helper.make_node("QuantizeLinear", [n + "_in_steps", one, zero_point], [n + "_uint8"], name=n + "_round"),
            helper.make_node("MatMulInteger", [n + "_uint8", dequantize.input[0], zero_point], [n + "_int32"],
                             name=n + "_integer"),
            helper.make_node("Cast", [n + "_int32"], [n + "_float"], name=n + "_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [n + "_float", n + "_step"], [matmul.output[0]], name=n + "_rescale"),
        ])
        doomed.append(matmul)
    index.remove_nodes(doomed)
    _remove_unused_dequantize(index)
    _topological_sort(model)
    return len(doomed)


def _remove_unused_dequantize(index: GraphIndex) -> None:
    outputs = {o.name for o in index.graph.output}
    unused = [n for n in index.graph.node if n.op_type == "DequantizeLinear"
              and not index.consumers.get(n.output[0]) and n.output[0] not in outputs]
    index.remove_nodes(unused)


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _topological_sort(model: onnx.ModelProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (appended nodes broke the order)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("the edited graph has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(id(n) != id(r) for r in ready)]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


# ------------------------------------------------------------------------------------------- pipeline
def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name after its first output.

    quantize_static excludes nodes by name, and quant_pre_process leaves nodes unnamed (it inlines each
    HardSwish into an unnamed HardSigmoid + Mul): unnamed, a node meant to stay float would be quantized.
    """
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.output[0] if node.output else 'node'}/unnamed_{i}"


def float_block_nodes(model: onnx.ModelProto, float_blocks: int) -> list[str]:
    """Names of the nodes of the first `float_blocks` MobileNet blocks (`features.0` ...), and of everything
    between the image and them (the input normalisation, colour constancy): the part `skinscan quantize` leaves
    in float (see `FLOAT_BLOCKS`).

    Expects every node named (`name_unnamed_nodes`). A node belongs to the blocks when its name or an output
    lies in their module scope, or when it is fed only from and feeds only into such nodes: the inlined
    HardSwish's HardSigmoid, whose name and output are generated (once quantized, those gates ran as
    Quantize -> QLinearMul -> Dequantize round trips between float convolutions)."""
    if float_blocks <= 0:
        return []
    scopes = tuple(f"/features.{i}/" for i in range(float_blocks))  # torch.onnx names nodes by module path
    in_blocks = {node.name for node in model.graph.node
                 if any(scope in text for scope in scopes for text in (node.name, *node.output))}
    if not in_blocks:
        raise ValueError(f"no nodes named .../features.0/... in this graph: cannot keep the first {float_blocks} "
                         "blocks float (export it with `skinscan export`, or pass float_blocks=0)")
    index = GraphIndex(model)
    grown = True
    while grown:  # e.g. the inlined HardSigmoid: Conv (in the blocks) -> HardSigmoid -> Mul (in the blocks)
        grown = False
        for node in model.graph.node:
            if node.name in in_blocks:
                continue
            producers = [index.producer.get(name) for name in node.input if name and name not in index.initializers]
            consumers = [c for name in node.output for c in index.consumers.get(name, [])]
            if producers and consumers and all(p is not None and p.name in in_blocks for p in producers) \
                    and all(c.name in in_blocks for c in consumers):
                in_blocks.add(node.name)
                grown = True
    names = [node.name for node in model.graph.node if node.name in in_blocks]
    preprocessing, pending = [], [name for node in model.graph.node if node.name in in_blocks for name in node.input]
    while pending:  # walk back from the blocks to the image: the normalisation (folded or not), colour constancy
        producer = index.producer.get(pending.pop())
        if producer is not None and producer.name not in in_blocks and producer.name not in preprocessing:
            preprocessing.append(producer.name)
            pending += list(producer.input)
    return names + preprocessing


def quantize_package_model(fp32_path: str | Path, int8_path: str | Path, calibration_images: np.ndarray,
                           calibrate_method: str = "MinMax", per_channel: bool = True,
                           graph_edits: bool = True, nodes_to_exclude: list[str] | None = None,
                           float_blocks: int = 0) -> dict:
    """fp32 package graph -> INT8 QOperator graph with the speed edits; metadata copied over.

    float_blocks: keep the first N MobileNet blocks in float (mixed precision; `skinscan quantize` uses
    `FLOAT_BLOCKS`). Returns what was done (for the quantization report).
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    original = onnx.load(str(fp32_path))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        model = onnx.load(str(prepared))
        if graph_edits:
            model = fold_normalization_into_stem(model)
        name_unnamed_nodes(model)  # exclusion (float blocks, explanation and gate branches) goes by name
        float_names = float_block_nodes(model, float_blocks)
        if graph_edits and not float_names:
            require_pixels_at_stem(model)
        cam_nodes = explanation_only_nodes(model)  # the explanation branch stays float (module docstring)
        gate_nodes = gate_only_nodes(model)
        onnx.save(model, str(prepared))
        # The temperature and the softmax stay float: 7 values, and uint8 probabilities would step by 1/256.
        outputs = set(CLASSIFICATION_OUTPUTS)
        excluded = list(nodes_to_exclude or []) + [n.name for n in model.graph.node if outputs & set(n.output)]
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared), str(quantized), ImageCalibrationReader(calibration_images),
            quant_format=QuantFormat.QOperator, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            nodes_to_exclude=excluded + float_names + [n.name for n in cam_nodes + gate_nodes],
            extra_options={"CalibPercentile": 99.99} if calibrate_method == "Percentile" else {},
        )
        model = onnx.load(str(quantized))
    counts = {}
    if graph_edits:
        if not float_names:  # a float stem reads float pixels: nothing to feed
            model = feed_pixels_to_stem(model)
        model, counts = fuse_hardsigmoid_gates(model)
        if explanation_only_nodes(model):
            counts["cam_integer_matmuls"] = integer_cam_matmuls(model)
    remove_unused_initializers(model)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    onnx.checker.check_model(model)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(int8_path))
    return {"format": "QOperator", "per_channel": per_channel, "calibrate_method": calibrate_method,
            "calibration_images": int(len(calibration_images)), "graph_edits": graph_edits,
            "float_nodes": len(excluded), "float_blocks": float_blocks, **counts,
            **({"cam_float_nodes": len(cam_nodes)} if cam_nodes else {}),
            **({"gate_float_nodes": len(gate_nodes)} if gate_nodes else {})}


def refit_gate_thresholds(int8_path: Path, val_images: np.ndarray) -> dict:
    """Re-choose the "cannot assess" thresholds on the INT8 graph's own validation scores.

    The gate's nodes stay float, but the lesion distance reads the INT8 network's early feature maps, whose
    spread quantization noise inflates (distances ~4x those of FP32): FP32's threshold would turn lesions
    away. The same rule (`choose_thresholds`, same budget) on the same val images gives INT8 its own line.
    """
    from skinscan.runtime.assess import choose_thresholds

    scores = session(int8_path).run([ASSESS], {"image": val_images})[0]
    spec = {**choose_thresholds(scores), "precision": "int8"}
    model = onnx.load(str(int8_path))
    set_metadata(model, {"skinscan.assess": json.dumps(spec)})
    onnx.save(model, str(int8_path))
    return {"val_rejected": spec["val_rejected"],
            "lesion_distance_threshold": spec["checks"][-1]["above"]}


# --------------------------------------------------------------------------------------- package step
def sample_calibration_images(data_dir: str | Path, split_csv: str | Path, config: PreprocessConfig,
                              count: int = 256, seed: int = 0, labels: LabelSet = HAM10000) -> np.ndarray:
    """`count` training-split images, class-stratified (each class gets its share, rare ones at least a few).

    Calibration only sees training images: never the val/test images the report scores.
    """
    return load_split_images(data_dir, split_csv, "train", config, max_images=count, seed=seed, labels=labels)[0]


def session(path: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session on a file path or serialized model bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_probabilities(path: str | Path, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    runner = session(path, threads=os.cpu_count() or 1)
    return np.concatenate([runner.run(["probabilities"], {"image": images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])


def compare_precisions(fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray,
                       latency_iterations: int = 200, codes: list[str] | None = None) -> dict:
    """Accuracy of both graphs on the same images, their agreement, sizes and 1-thread batch-1 latency.

    codes: the models' label codes in output order (default HAM10000's); labels index into them.
    """
    codes = list(codes or HAM10000.codes)
    from skinscan.runtime.benchmark import compare_latency

    fp32 = onnx_probabilities(fp32_path, images)
    int8 = onnx_probabilities(int8_path, images)
    result = {"images": int(len(labels)), "top1_agreement": float((fp32.argmax(1) == int8.argmax(1)).mean()),
              "max_probability_difference": float(np.abs(fp32 - int8).max())}
    for name, probabilities in (("fp32", fp32), ("int8", int8)):
        metrics = classification_metrics(labels, probabilities, codes, n_bootstrap=0)
        melanoma = metrics["per_class"].get("mel", {}).get("sensitivity")  # None for label sets without `mel`
        result[name] = {"balanced_accuracy": metrics["balanced_accuracy"], "macro_auc": metrics["macro_auc"],
                        "melanoma_sensitivity": melanoma,
                        "megabytes": Path(fp32_path if name == "fp32" else int8_path).stat().st_size / 1e6}
    result["balanced_accuracy_drop_points"] = 100 * (result["fp32"]["balanced_accuracy"]
                                                     - result["int8"]["balanced_accuracy"])
    result["latency"] = compare_latency({"fp32": fp32_path, "int8": int8_path}, images[:1],
                                        iterations=latency_iterations)
    return result


def quantize_package(package_dir: str | Path, data_dir: str | Path, split_csv: str | Path, part: str = "test",
                     calibration_count: int = 256, calibrate_method: str = "MinMax", graph_edits: bool = True,
                     seed: int = 0, float_blocks: int | None = None) -> dict:
    """Add `skinscan-int8.onnx` to a model package, compare it with FP32 on `part`, update the manifest.

    Writes `quantization.json` (the report) into the package: it travels with the model it describes.
    """
    package_dir = Path(package_dir)
    fp32_path, int8_path = package_dir / FP32_FILE, package_dir / INT8_FILE
    verify_file(package_dir, FP32_FILE)
    metadata = read_metadata(onnx.load(str(fp32_path)))
    config = PreprocessConfig.from_json(metadata["skinscan.preprocess"])
    label_set = LabelSet.from_metadata(metadata)
    calibration = sample_calibration_images(data_dir, split_csv, config, calibration_count, seed, label_set)
    float_blocks = FLOAT_BLOCKS if float_blocks is None else float_blocks
    settings = quantize_package_model(fp32_path, int8_path, calibration, calibrate_method=calibrate_method,
                                      graph_edits=graph_edits, float_blocks=float_blocks)
    if "skinscan.assess" in metadata:
        val_images = load_split_images(data_dir, split_csv, "val", config, labels=label_set)[0]
        settings["assess"] = refit_gate_thresholds(int8_path, val_images)
    images, labels, _ = load_split_images(data_dir, split_csv, part, config, labels=label_set)
    report = {"settings": settings, "evaluated_on": part,
              **compare_precisions(fp32_path, int8_path, images, labels, codes=list(label_set.codes))}
    (package_dir / "quantization.json").write_text(json.dumps(report, indent=2))
    convert_to_ort(int8_path)  # the ORT Mobile form for native apps' reduced runtimes
    write_manifest(package_dir)
    return report
