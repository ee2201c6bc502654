"""Mixed-precision (fp16) graphs for TensorRT's strongly typed networks.

TensorRT 11 has no fp16 builder flag: an fp16 engine needs fp16 types inside the ONNX. Each
exported graph but those of :data:`FP16_GRAPHS_SKIP` is converted with onnxconverter-common:
fp16 weights and activations, fp32 inputs and outputs (the runtime binds fp32), and in fp32 the
ops that normalise or accumulate (LayerNorm, GroupNorm as InstanceNormalization, the cost map's L2
normalisation, reductions, softmax), the running class-attention sum that carries over up to
``max_classes / chunk`` chunks, and the output and auxiliary heads (whose logits decide CER and
the labels). The list was chosen by measuring the parity model's error under variants of it;
``sed-trt compare --backends onnxruntime-fp16`` reports the shipped list's (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Any

import onnx

from sed_trt.runtime.errors import BackendUnavailableError, ExportError, install_hint
from sed_trt.runtime.io_spec import CER_GRAPHS, LABELS, RUNNING_SUMS, TEXT_ENCODER

FP32_OPS = ("LayerNormalization", "InstanceNormalization", "ReduceL2", "ReduceMean", "ReduceSum", "Softmax")
# fp32 even in fp16 engine sets: the text encoder (run once per vocabulary, its features
# cached), CER's decision and the label map (exact comparisons of fp32 values).
FP16_GRAPHS_SKIP = (TEXT_ENCODER, *CER_GRAPHS, LABELS)


def _converter() -> Any:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise BackendUnavailableError(f"fp16 graphs need onnxconverter-common: {install_hint('trt')}") from None
    return float16


def _detach_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output that other nodes also read its own Identity node: the converter
    casts outputs back to fp32 and would otherwise retype the tensor those nodes read."""
    outputs = {o.name for o in model.graph.output}
    read = {i for n in model.graph.node for i in n.input}
    for name in sorted(outputs & read):
        inner = f"{name}__fp16_inner"
        for node in model.graph.node:
            node.input[:] = [inner if i == name else i for i in node.input]
            node.output[:] = [inner if o == name else o for o in node.output]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}__fp16_out"))


def _fp32_outputs(model: onnx.ModelProto) -> None:
    """Make every graph output fp32 again: the converter casts the output of a node kept in fp32
    (the running sum) back to fp16 even with ``keep_io_types``; that cast becomes a cast to fp32."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT16:
            continue
        node = producers[out.name]
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT
        else:
            inner = f"{out.name}__fp16"
            node.output[:] = [inner if o == out.name else o for o in node.output]
            model.graph.node.append(
                onnx.helper.make_node(
                    "Cast", [inner], [out.name], to=onnx.TensorProto.FLOAT, name=f"{out.name}__to_fp32"
                )
            )
        tt.elem_type = onnx.TensorProto.FLOAT


HEAD_OUTPUTS = ("aux_logits", "probs")  # the heads' logits decide CER's kept sets and the labels
_PASS_THROUGH = ("Reshape", "Squeeze", "Unsqueeze", "Sigmoid", "Identity")


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes from each head's Conv to its graph output (:data:`HEAD_OUTPUTS`), kept fp32 as
    in the torch backend's reduced precision (sed.modeling.precision)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for out in (o.name for o in model.graph.output if o.name.split("__fp16")[0] in HEAD_OUTPUTS):
        node = producers.get(out)
        while node is not None and node.op_type in _PASS_THROUGH:
            names.append(node.name)
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "Conv":
            names.append(node.name)
    return names


def attend_nodes(model: onnx.ModelProto) -> list[str]:
    """The class attention's use of the summaries (a fuse graph's ``class_kv`` input, summed over the
    whole vocabulary without 1/T): every node from that input up to and including the division
    that normalises it. Kept fp32: in fp16 the product passes 65504 near 2000 classes."""
    sums = set(RUNNING_SUMS.values())
    frontier = [i.name for i in model.graph.input if i.name in sums]
    names: list[str] = []
    seen: set[str] = set()
    while frontier:
        value = frontier.pop()
        for node in model.graph.node:
            if value in node.input and node.name not in seen:
                seen.add(node.name)
                names.append(node.name)
                if node.op_type != "Div":  # the normalised ratio is bounded: fp16 from there on
                    frontier.extend(node.output)
    return names


def _elide_round_trips(model: onnx.ModelProto) -> None:
    """Remove fp32 -> fp16 -> fp32 cast pairs the converter puts between two fp32 (blocked) nodes:
    the round trip loses precision and overflows past 65504, where the values were meant to stay fp32."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    removed: set[int] = set()
    for down in list(graph.node):
        if cast_to(down) != onnx.TensorProto.FLOAT16 or down.output[0] in outputs:
            continue
        ups = consumers.get(down.output[0], [])
        if not ups or any(cast_to(u) != onnx.TensorProto.FLOAT for u in ups):
            continue
        source = down.input[0]
        for up in ups:  # every reader of the fp32 copy reads the fp32 original instead
            for reader in consumers.get(up.output[0], []):
                for i, name in enumerate(reader.input):
                    if name == up.output[0]:
                        reader.input[i] = source
            for out in graph.output:
                if out.name == up.output[0]:
                    out.name = source
            removed.add(id(up))
        removed.add(id(down))
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)


def convert_graph(src: str | Path, dst: str | Path) -> None:
    """Write the mixed-precision version of the fp32 graph ``src`` to ``dst``."""
    float16 = _converter()
    model = onnx.load(str(src))
    del model.graph.value_info[:]  # the exporter's fp32 annotations would contradict the new types
    _detach_outputs(model)
    sums = set(RUNNING_SUMS.values())
    fp32_nodes = [n.name for n in model.graph.node if any(o.split("__fp16")[0] in sums for o in n.output)]
    fp32_nodes += head_nodes(model)
    fp32_nodes += attend_nodes(model)
    try:
        with warnings.catch_warnings():  # "the float32 number 1e-12 will be truncated to 1e-07": epsilons, by design
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=list(FP32_OPS), node_block_list=fp32_nodes
            )
        _fp32_outputs(converted)
        trimmed = copy.deepcopy(converted)
        _elide_round_trips(trimmed)
        # Kept only where every type still agrees (a source that was fp16 after all keeps its casts).
        with contextlib.suppress(Exception):
            onnx.shape_inference.infer_shapes(trimmed, strict_mode=True)
            converted = trimmed
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises assorted types
        raise ExportError(f"cannot convert {Path(src).name} to fp16: {exc}") from None
    onnx.save(converted, str(dst))
