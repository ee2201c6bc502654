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


def convert_graph(src: str | Path, dst: str | Path) -> None:
    """Write the mixed-precision version of the fp32 graph ``src`` to ``dst``."""
    float16 = _converter()
    model = onnx.load(str(src))
    del model.graph.value_info[:]  # the exporter's fp32 annotations would contradict the new types
    _detach_outputs(model)
    sums = set(RUNNING_SUMS.values())
    fp32_nodes = [n.name for n in model.graph.node if any(o.split("__fp16")[0] in sums for o in n.output)]
    fp32_nodes += head_nodes(model)
    try:
        with warnings.catch_warnings():  # "the float32 number 1e-12 will be truncated to 1e-07": epsilons, by design
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=list(FP32_OPS), node_block_list=fp32_nodes
            )
        _fp32_outputs(converted)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises assorted types
        raise ExportError(f"cannot convert {Path(src).name} to fp16: {exc}") from None
    onnx.save(converted, str(dst))
