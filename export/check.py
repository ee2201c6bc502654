"""CPU check that an ONNX graph stays inside what TensorRT's ONNX parser accepts.

There is no official CPU-only TensorRT lint. This check encodes the facts we rely on
(onnx-tensorrt operators.md for TensorRT 10.x/11.x): opset 17-20, an op allow-list,
attribute restrictions, constant reduction axes, static ranks everywhere, and none of the
data-dependent or unsupported ops (NonZero, Unique, Compress, Sequence*, Loop/If/Scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import shape_inference

MIN_OPSET, MAX_OPSET = 17, 20

# Ops TensorRT 10.x/11.x imports (subset relevant to SED graphs; operators.md).
TRT_ALLOWED_OPS = frozenset(
    [
        "Abs",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "AveragePool",
        "Cast",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "DequantizeLinear",
        "Div",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "Greater",
        "GreaterOrEqual",
        "GroupNormalization",
        "Identity",
        "InstanceNormalization",
        "LayerNormalization",
        "Less",
        "LessOrEqual",
        "Log",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pad",
        "Pow",
        "QuantizeLinear",
        "Range",
        "Reciprocal",
        "ReduceL2",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "ScatterElements",
        "ScatterND",
        "Shape",
        "Sigmoid",
        "Sin",
        "Slice",
        "Softmax",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Where",
        "Xor",
    ]
)
# Present in ONNX, refused here: data-dependent shapes, sequences or control flow inside an engine.
TRT_BANNED_OPS = frozenset(
    [
        "NonZero",
        "Unique",
        "Compress",
        "Loop",
        "If",
        "Scan",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SplitToSequence",
        "ConcatFromSequence",
        "StringNormalizer",
    ]
)
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"}
TOPK_MAX_K = 3840  # ITopKLayer: larger K is a runtime error


@dataclass(frozen=True)
class Violation:
    """One reason TensorRT would refuse (or mis-handle) a graph."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} node {self.node!r}: {self.reason}"


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# Ops through which an integer's upper bound carries over unchanged (shape plumbing).
_BOUND_PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Concat", "Flatten"}


def _constant(name: str, graph: onnx.GraphProto) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or a Constant node's tensor ``value``; else None."""
    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return onnx.numpy_helper.to_array(value.t) if value is not None else None
    return None


def _nonzero(value: np.ndarray | None) -> bool:
    """Whether a zero point is anything but a constant 0 (None: not a readable constant)."""
    return value is None or bool(np.any(value != 0))


def _upper_bound(name: str, graph: onnx.GraphProto) -> int | None:
    """A constant upper bound of integer tensor ``name`` where the graph shows one: a constant, a
    ``Min`` with a bounded operand, or shape plumbing over bounded values; else None."""
    value = _constant(name, graph)
    if value is not None:
        return int(value.max())
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None:
        return None
    if producer.op_type == "Min":
        bounds = [b for b in (_upper_bound(i, graph) for i in producer.input if i) if b is not None]
        return min(bounds) if bounds else None
    if producer.op_type in _BOUND_PASSTHROUGH:
        inputs = producer.input[: 1 if producer.op_type != "Concat" else None]
        found = [_upper_bound(i, graph) for i in inputs if i]
        known = [b for b in found if b is not None]
        return max(known) if known and len(known) == len(found) else None
    return None


def check_trt_compatible(model: onnx.ModelProto | str | Path) -> list[Violation]:
    """Every TensorRT-parser problem found in ``model`` (empty list: the graph passes)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    out: list[Violation] = []
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    main_opset = opsets.get("", opsets.get("ai.onnx", 0))
    if not MIN_OPSET <= main_opset <= MAX_OPSET:
        out.append(Violation("<model>", "opset", f"opset {main_opset} outside {MIN_OPSET}-{MAX_OPSET}"))
    if model.functions:
        out.append(Violation("<model>", "functions", f"{len(model.functions)} local functions remain (inline them)"))
    onnx.checker.check_model(model, full_check=False)
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    constants = {i.name for i in inferred.graph.initializer}
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
    for node in inferred.graph.node:
        name, op = node.name or "<unnamed>", node.op_type
        if node.domain not in ("", "ai.onnx"):
            out.append(Violation(name, op, f"custom domain {node.domain!r} has no TensorRT importer"))
            continue
        if op in TRT_BANNED_OPS:
            out.append(Violation(name, op, "data-dependent or unsupported op; keep it out of engine graphs"))
            continue
        if op not in TRT_ALLOWED_OPS:
            out.append(Violation(name, op, "op not on the TensorRT allow-list"))
            continue
        if op == "TopK":
            if _attr(node, "sorted", 1) != 1:
                out.append(Violation(name, op, "TensorRT requires sorted=1"))
            bound = _upper_bound(node.input[1], inferred.graph) if len(node.input) > 1 else None
            if bound is None:
                out.append(Violation(name, op, f"K has no constant upper bound (TensorRT caps K at {TOPK_MAX_K})"))
            elif bound >= TOPK_MAX_K:
                out.append(Violation(name, op, f"K must be < {TOPK_MAX_K}"))
        elif op == "Resize":
            mode = _attr(node, "mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
            ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
            if mode not in RESIZE_MODES:
                out.append(Violation(name, op, f"mode {mode!r} unsupported (nearest/linear only)"))
            if ctm not in RESIZE_COORD_MODES:
                out.append(Violation(name, op, f"coordinate_transformation_mode {ctm!r} unsupported"))
            if _attr(node, "antialias", 0):
                out.append(Violation(name, op, "antialias is unsupported"))
        elif op == "LayerNormalization":
            if len([o for o in node.output if o]) != 1:
                out.append(Violation(name, op, "only the first output (Y) is supported"))
        elif op.startswith("Reduce") and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
            out.append(Violation(name, op, "reduction axes must be a constant"))
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            # onnx-tensorrt operators.md: "y_zero_point must be 0"; scales and zero points are
            # build-time constants (explicit quantization reads them into the engine).
            q = node.input[1:3]
            if any(i and i not in constants for i in q):
                out.append(Violation(name, op, "scale and zero point must be constants"))
            elif len(q) > 1 and q[1] and _nonzero(_constant(q[1], inferred.graph)):
                out.append(Violation(name, op, "TensorRT requires a zero point of 0 (symmetric quantization)"))
        elif op == "ScatterND" and _attr(node, "reduction", b"none") not in (b"none", "none"):
            out.append(Violation(name, op, "ScatterND reduction must be 'none'"))
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and not tt.HasField("shape"):
            out.append(Violation(vi.name, "value", "unknown rank (TensorRT needs static ranks)"))
    return out
