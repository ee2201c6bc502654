"""Exported graphs: TensorRT-parser check, and each decoder stage vs PyTorch at N = 1, 7, 150, 847."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.check import check_trt_compatible
from export.onnx_export import example_inputs, run_torch
from export.wrappers import wrapper_for
from runtime.io_spec import CLASS_AXIS, DECODER_GRAPHS, GRAPH_NAMES
from runtime.manifest import Manifest


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
