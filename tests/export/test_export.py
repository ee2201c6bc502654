"""Exported graphs: TensorRT-parser check, and each decoder stage vs PyTorch at N = 1, 7, 150, 847."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sed_trt.export.check import check_trt_compatible
from sed_trt.export.fp16 import FP16_GRAPHS_SKIP, head_nodes
from sed_trt.export.onnx_export import example_inputs, run_torch
from sed_trt.export.wrappers import wrapper_for
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.io_spec import CLASS_AXIS, DECODER_GRAPHS, GRAPH_NAMES
from sed_trt.runtime.manifest import Manifest
from tests.parity import trim


def test_every_graph_passes_the_trt_check(small_engine_dir):
    manifest = Manifest.load(small_engine_dir)
    assert set(manifest.graphs) == set(GRAPH_NAMES)
    for name, rel in manifest.graphs.items():
        model = onnx.load(str(small_engine_dir / rel))
        assert check_trt_compatible(model) == [], name
        assert model.opset_import[0].version == 20
        assert not model.graph.initializer or all(
            not t.HasField("data_location") or t.data_location == 0 for t in model.graph.initializer
        )
        consts = {t.name for t in model.graph.initializer} | {
            o for n in model.graph.node if n.op_type == "Constant" for o in n.output
        }
        from_weights = [n.name for n in model.graph.node if n.op_type != "Constant" and set(n.input) <= consts | {""}]
        assert from_weights == [], f"{name}: weights computed at run time (fold them at export): {from_weights}"


def test_trt_check_catches_unsupported_graphs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1, "K"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])
    nz = helper.make_node("NonZero", ["x"], ["y"], name="nz")
    rs = helper.make_node("Resize", ["w", "", "s"], ["z"], name="rs", mode="cubic")
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 2, 2, 2])
    s = helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    graph = helper.make_graph([nz, rs], "g", [x, w], [y, z], initializer=[s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    problems = [str(p) for p in check_trt_compatible(model)]
    assert any("NonZero" in p for p in problems)
    assert any("mode 'cubic'" in p for p in problems)
    old = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 13)])
    assert any("opset 13" in str(p) for p in check_trt_compatible(old))


@pytest.mark.parametrize("stage", DECODER_GRAPHS)
@pytest.mark.parametrize("num_classes", [1, 7, 150, 847])
def test_decoder_stage_graph_matches_torch(small_model, small_engine_dir, stage, num_classes):
    import onnxruntime as ort

    manifest = Manifest.load(small_engine_dir)
    spec = manifest.specs[stage]
    feeds = example_inputs(spec, {"B": 1, "N": num_classes}, seed=num_classes)
    sess = ort.InferenceSession(str(small_engine_dir / manifest.graphs[stage]), providers=["CPUExecutionProvider"])
    got = dict(zip(spec.output_names, sess.run(spec.output_names, feeds)))
    want = run_torch(wrapper_for(small_model, stage, 1), spec, feeds)
    for t in spec.outputs:
        name = t.name
        assert got[name].shape == want[name].shape
        assert CLASS_AXIS not in t.shape or got[name].shape[1] == num_classes
        np.testing.assert_allclose(
            got[name], want[name], atol=1e-4 * max(1.0, float(np.abs(want[name]).max())), rtol=1e-4
        )


def test_batch_axis_is_dynamic(small_model, small_engine_dir):
    import onnxruntime as ort

    manifest = Manifest.load(small_engine_dir)
    for stage in ("image_encoder", "decoder_stage1_summaries", "decoder_stage1_fuse"):
        spec = manifest.specs[stage]
        feeds = example_inputs(spec, {"B": 3, "N": 5, "H": 40, "W": 56}, seed=3)
        sess = ort.InferenceSession(str(small_engine_dir / manifest.graphs[stage]), providers=["CPUExecutionProvider"])
        got = sess.run(spec.output_names, feeds)
        want = run_torch(wrapper_for(small_model, stage, 1), spec, feeds)
        for g, name in zip(got, spec.output_names):
            np.testing.assert_allclose(g, want[name], atol=1e-4 * max(1.0, float(np.abs(want[name]).max())))


@pytest.mark.parity
@pytest.mark.parametrize("topk", [None, 1, 2, 8])
def test_fp16_graphs_are_close_to_the_official_outputs(parity_engine_dir, parity, parity_image, topk):
    """The mixed-precision graphs fp16 TensorRT engines are built from, run in ONNX Runtime on the
    CPU: probabilities within 2e-3 of the official fp32 outputs and identical CER kept sets.
    Labels are not compared: the tiny parity model's classes are near-ties (bf16 keeps 18 %)."""
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.predictor import Predictor

    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir, precision="fp16").activate()
    assert backend.label == "onnxruntime-fp16"
    pred = Predictor(backend, topk=topk)
    pred.set_classes(parity["classes"])
    out = pred.predict(parity_image)
    exp = parity["expected"]
    ref = 1 / (1 + np.exp(-exp["logits_pool1"])) if topk is None else exp[f"cer_k{topk}_probs"]
    probs = trim("cer_k1_probs", out.probs)
    kept = np.ones(len(parity["classes"]), bool) if topk is None else exp[f"cer_k{topk}_kept"]
    err = np.abs(probs - ref).max()
    assert 0 < err < 2e-3, err  # > 0: the fp16 graphs really compute in fp16
    np.testing.assert_array_equal(out.kept, kept)


def test_fp16_graphs_keep_fp32_io_and_fp32_sums(parity_engine_dir):
    manifest = Manifest.load(parity_engine_dir)
    assert set(manifest.fp16_graphs) == set(manifest.graphs) - set(FP16_GRAPHS_SKIP)
    for name, rel in manifest.fp16_graphs.items():
        model = onnx.load(parity_engine_dir / rel)
        onnx_types = {
            "float32": onnx.TensorProto.FLOAT,
            "int32": onnx.TensorProto.INT32,
            "int64": onnx.TensorProto.INT64,
        }
        spec = manifest.specs[name]
        want = {t.name: onnx_types[t.dtype] for t in (*spec.inputs, *spec.outputs)}
        got = {t.name: t.type.tensor_type.elem_type for t in (*model.graph.input, *model.graph.output)}
        assert got == want, name  # the I/O of the spec: fp32 where it is float
        types = {i.data_type for i in model.graph.initializer if len(i.dims) > 1}
        assert onnx.TensorProto.FLOAT16 in types, name  # weights really fp16
        if name.endswith("_summaries"):
            add = next(n for n in model.graph.node if "class_kv_in" in n.input and n.op_type == "Add")
            assert add  # the running sum reads the fp32 input directly (no fp16 round trip)
        if "fuse" in name or name == "decoder_stage0":  # the heads' convolutions read fp32 weights
            weights = {i.name: i.data_type for i in model.graph.initializer}
            heads = head_nodes(onnx.load(parity_engine_dir / manifest.graphs[name]))
            convs = [n for n in model.graph.node if n.name in heads and n.op_type == "Conv"]
            assert convs and all(weights[n.input[1]] == onnx.TensorProto.FLOAT for n in convs), name
    with pytest.raises(ConfigError, match="no fp16 graphs"):
        Manifest(**{**manifest.__dict__, "fp16_graphs": {}}).graphs_for("fp16")


def test_fp16_fuse_graphs_keep_the_class_attention_in_fp32(parity_engine_dir):
    """The summaries add over the whole vocabulary (no 1/T): at a few thousand classes they pass
    fp16's 65504. The fp16 fuse graphs read them in fp32 up to the normalised ratio, so a
    summary of that size still gives finite outputs (it gave inf/NaN with the product in fp16)."""
    import onnxruntime as ort

    manifest = Manifest.load(parity_engine_dir)
    for graph in ("decoder_stage1_fuse", "decoder_stage2_fuse", "decoder_stage3_fuse"):
        spec = manifest.specs[graph]
        feeds = example_inputs(spec, {"B": 1, "T": 3, "N": 3})
        feeds["class_kv"] = np.abs(feeds["class_kv"]) * 1e6 + 1e5  # sums over ~10^4 classes
        session = ort.InferenceSession(str(parity_engine_dir / manifest.fp16_graphs[graph]))
        for name, out in zip(spec.output_names, session.run(spec.output_names, feeds)):
            assert np.isfinite(out).all(), (graph, name)
