"""The ONNX Runtime backend reproduces the PyTorch backend through the shared CER predictor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sed_trt.runtime.backends import create_backend
from sed_trt.runtime.errors import EngineError, StateError, VocabularyError
from sed_trt.runtime.predictor import Predictor
from sed_trt.runtime.text_cache import TextFeatureCache
from tests.parity import trim

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def results(parity_model, parity_engine_dir, parity, parity_image):
    out = {}
    torch_b = create_backend("torch", model=parity_model).activate()
    ort_b = create_backend("onnxruntime", engine_dir=parity_engine_dir, backbone="sed_tiny_linear").activate()
    # The device path (CER and the label map as the cerK and labels graphs, as TensorRT runs
    # them), here in ONNX Runtime on the CPU.
    graphs_b = create_backend("onnxruntime", engine_dir=parity_engine_dir)
    graphs_b.device_resident = True
    graphs_b.activate()
    for name, backend in (("torch", torch_b), ("onnxruntime", ort_b), ("graphs", graphs_b)):
        for k in (None, 1, 2, 8):
            pred = Predictor(backend, topk=k)
            pred.set_classes(parity["classes"])
            out[name, k] = pred.predict(parity_image)
    return out


@pytest.mark.parametrize("path", ["onnxruntime", "graphs"])
@pytest.mark.parametrize("topk", [None, 1, 2, 8])
def test_onnxruntime_matches_torch_and_official(results, parity, topk, path):
    t, o = results["torch", topk], results[path, topk]
    np.testing.assert_allclose(o.probs, t.probs, atol=1e-4)
    np.testing.assert_array_equal(o.kept, t.kept)
    assert (o.labels == t.labels).mean() >= 0.999
    exp = parity["expected"]
    if topk is None:
        assert o.kept.all() and o.survivors == [24, 24, 24]
        ref_labels = exp["labels_pool1"]
    else:
        np.testing.assert_array_equal(o.kept, exp[f"cer_k{topk}_kept"])
        np.testing.assert_allclose(trim(f"cer_k{topk}_probs", o.probs), exp[f"cer_k{topk}_probs"], atol=1e-4)
        assert (o.probs[~o.kept] == 0).all()
        ref_labels = exp[f"cer_k{topk}_labels"]
    assert (o.labels == ref_labels).mean() >= 0.999
    assert o.labels.dtype == np.uint8 and o.labels.shape == tuple(parity["meta"]["image_size_hw"])


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
    (broken / "decoder_stage2_fuse.onnx").unlink()
    with pytest.raises(EngineError, match="incomplete: 'decoder_stage2_fuse.onnx'"):
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


def test_onnxruntime_arena_is_on_unless_refused(parity_engine_dir):
    from sed_trt.runtime.backends import BackendRequest, open_backend
    from sed_trt.runtime.errors import ConfigError

    fat = create_backend("onnxruntime", engine_dir=parity_engine_dir).activate()
    lean = open_backend(
        "onnxruntime", BackendRequest(engine_dir=parity_engine_dir, options={"mem_arena": False})
    ).activate()
    assert lean._options.enable_cpu_mem_arena is False and fat._options.enable_cpu_mem_arena is True
    with pytest.raises(ConfigError, match="--ort-arena applies to --backend onnxruntime only"):
        open_backend("openvino", BackendRequest(engine_dir=parity_engine_dir, options={"mem_arena": True}))


@pytest.mark.parametrize("topk", [None, 2])
def test_chunked_decoding_matches_the_whole_vocabulary_forward(parity_model, parity, parity_image, topk):
    """The runtime decodes in class chunks (split stages, summed attention summaries); the
    official forward holds every class at once. Chunks of 1, of a size that does not divide
    T = 24, and one chunk for everything give the same probabilities and kept sets."""
    import torch

    from sed_trt.runtime.image import preprocess

    backend = create_backend("torch", model=parity_model).activate()
    runs = {}
    for chunk in (1, 5, 100):
        pred = Predictor(backend, topk=topk, class_chunk=chunk)
        pred.set_classes(parity["classes"])
        runs[chunk] = pred.predict(parity_image)
    with torch.no_grad():
        ref = parity_model(
            torch.from_numpy(preprocess([parity_image], 768)["image"]), torch.from_numpy(pred.text_features), topk=topk
        )
    for chunk, r in runs.items():
        np.testing.assert_array_equal(r.kept, ref.kept.numpy(), err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(r.probs, ref.probs[0].numpy(), atol=1e-5, err_msg=f"chunk {chunk}")
    if topk is not None:
        assert 0 < runs[1].kept.sum() < len(parity["classes"])  # CER gathered a strict subset chunk by chunk


def test_onnxruntime_chunks_agree_and_are_bounded_by_the_export(parity_engine_dir, parity, parity_image):
    from sed_trt.runtime.errors import ConfigError, InputError

    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir).activate()
    assert backend.class_chunk == 4
    probs = {}
    for chunk in (1, 3, 4):
        pred = Predictor(backend, topk=2, class_chunk=chunk)
        pred.set_classes(parity["classes"])
        probs[chunk] = pred.predict(parity_image).probs
    np.testing.assert_allclose(probs[1], probs[4], atol=1e-5)
    np.testing.assert_allclose(probs[3], probs[4], atol=1e-5)
    with pytest.raises(ConfigError, match="between 1 and 4"):
        Predictor(backend, class_chunk=5)
    spec = backend.specs["decoder_stage0"]
    feeds = {"clip_dense": np.zeros(spec.inputs[0].concrete({"B": 1}), np.float32)}
    feeds["text_features"] = np.zeros(spec.inputs[1].concrete({"N": 5}), np.float32)
    with pytest.raises(InputError, match="at most 4"):
        backend.run("decoder_stage0", feeds)


def test_probabilities_are_fetched_only_while_the_backend_is_active(parity_engine_dir, parity, parity_image):
    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir)
    with backend:
        pred = Predictor(backend, topk=2)
        pred.set_classes(parity["classes"])
        kept_read = pred.predict(parity_image)
        kept_read.probs  # noqa: B018 (fetched while active: kept after)
        unread = pred.predict(parity_image)
    np.testing.assert_allclose(trim("cer_k2_probs", kept_read.probs), parity["expected"]["cer_k2_probs"], atol=1e-4)
    with pytest.raises(StateError, match="before the backend is deactivated"):
        unread.probs  # noqa: B018


@pytest.mark.parametrize("device_path", [False, True], ids=["host-cer", "cer-graphs"])
def test_a_batch_answers_each_image_as_alone(small_engine_dir, device_path):
    """CER per image: in a batch every image keeps what it keeps alone (labels and kept sets),
    whatever its batch-mates; the official union over the batch stays available (cer_union)."""
    backend = create_backend("onnxruntime", engine_dir=small_engine_dir)
    backend.device_resident = device_path  # the cerK and labels graphs, as device backends run them
    backend.activate()
    pred = Predictor(backend, cache=TextFeatureCache(None))
    pred.set_classes(["sky", "tree", "road", "person", "car", "grass", "water", "wall"])
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (64, 48), (30, 30), (50, 70))]
    images[1][:] = images[1].mean(axis=(0, 1), keepdims=True).astype(np.uint8)  # a flat photo: other classes
    alone = [pred.predict(im, topk=1) for im in images]
    kept_sets = {tuple(a.kept) for a in alone}
    assert len(kept_sets) > 1, "the images keep the same classes: the test would not split a batch"
    batched = pred.predict_batch(images, topk=1)
    for a, b in zip(alone, batched):
        np.testing.assert_array_equal(b.kept, a.kept)
        np.testing.assert_array_equal(b.labels, a.labels)
        assert b.survivors == a.survivors
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
    union = pred.predict_batch(images, topk=1, cer_union=True)
    assert len({tuple(u.kept) for u in union}) == 1  # one kept set for the whole batch
    backend.deactivate()
