"""The ONNX Runtime backend reproduces the PyTorch backend through the shared CER predictor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.backends import create_backend
from runtime.errors import EngineError, StateError, VocabularyError
from runtime.predictor import Predictor
from runtime.text_cache import TextFeatureCache

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def results(parity_model, parity_engine_dir, parity, parity_image):
    out = {}
    torch_b = create_backend("torch", model=parity_model).activate()
    ort_b = create_backend("onnxruntime", engine_dir=parity_engine_dir, backbone="sed_tiny_linear").activate()
    for name, backend in (("torch", torch_b), ("onnxruntime", ort_b)):
        for k in (None, 1, 2, 8):
            pred = Predictor(backend, topk=k)
            pred.set_classes(parity["classes"])
            out[name, k] = pred.predict(parity_image)
    return out


@pytest.mark.parametrize("topk", [None, 1, 2, 8])
def test_onnxruntime_matches_torch_and_official(results, parity, topk):
    t, o = results["torch", topk], results["onnxruntime", topk]
    np.testing.assert_allclose(o.probs, t.probs, atol=1e-4)
    np.testing.assert_array_equal(o.kept, t.kept)
    assert (o.labels == t.labels).mean() >= 0.999
    exp = parity["expected"]
    if topk is None:
        assert o.kept.all() and o.survivors == [24, 24, 24]
        ref_labels = exp["labels_pool1"]
    else:
        np.testing.assert_array_equal(o.kept, exp[f"cer_k{topk}_kept"])
        np.testing.assert_allclose(o.probs, exp[f"cer_k{topk}_probs"], atol=1e-4)
        assert (o.probs[~o.kept] == 0).all()
        ref_labels = exp[f"cer_k{topk}_labels"]
    assert (o.labels == ref_labels).mean() >= 0.999
    assert o.labels.dtype == np.int32 and o.labels.shape == tuple(parity["meta"]["image_size_hw"])


def test_text_cache_hit_skips_the_encoder(parity_engine_dir, parity, tmp_path):
    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir).activate()
    calls = []
    pred = Predictor(backend, cache=TextFeatureCache(tmp_path))
    original = pred.encode_text
    pred.encode_text = lambda tokens: (calls.append(len(tokens)), original(tokens))[1]
    pred.set_classes(parity["classes"][:5])
    first = len(calls)
    pred2 = Predictor(backend, cache=TextFeatureCache(tmp_path))
    pred2.encode_text = pred.encode_text
    pred2.set_classes(parity["classes"][:5])
    assert first > 0 and len(calls) == first
    assert len(list((tmp_path / "text").glob("*.npz"))) == 1


def test_engine_dir_errors(parity_engine_dir, tmp_path, parity):
    with pytest.raises(EngineError, match="exported for backbone 'sed_tiny_linear', not 'convnext_b'"):
        create_backend("onnxruntime", engine_dir=parity_engine_dir, backbone="convnext_b")
    with pytest.raises(EngineError, match="does not exist"):
        create_backend("onnxruntime", engine_dir=tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(parity_engine_dir, broken)
    (broken / "decoder_stage2.onnx").unlink()
    with pytest.raises(EngineError, match="incomplete: 'decoder_stage2.onnx'"):
        create_backend("onnxruntime", engine_dir=broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["format"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="manifest format 99"):
        create_backend("onnxruntime", engine_dir=broken)
    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir).activate()
    with pytest.raises(VocabularyError, match="at most 64"):
        Predictor(backend).set_classes([f"class {i}" for i in range(65)])
    with pytest.raises(StateError, match="set_classes"):
        Predictor(backend).predict(np.zeros((8, 8, 3), np.uint8))


def test_onnxruntime_arena_is_off_unless_asked(parity_engine_dir):
    from runtime.backends import open_backend
    from runtime.errors import ConfigError

    lean = create_backend("onnxruntime", engine_dir=parity_engine_dir).activate()
    fat = open_backend("onnxruntime", engine_dir=parity_engine_dir, ort_arena=True).activate()
    assert lean._options.enable_cpu_mem_arena is False and fat._options.enable_cpu_mem_arena is True
    with pytest.raises(ConfigError, match="applies to --backend onnxruntime only"):
        open_backend("openvino", engine_dir=parity_engine_dir, ort_arena=True)
