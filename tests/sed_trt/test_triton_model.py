"""The repository's models without a server: the sed model's initialize/execute glue and the bls
form's orchestration, over a fake of Triton's Python-backend API (tests/fake_triton.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from sed_trt.runtime.backends.base import DEVICE_GRAPHS
from sed_trt.runtime.manifest import Manifest
from sed_trt.runtime.predictor import Predictor
from sed_trt.serve.bls import TritonBLSBackend
from tests import fake_triton
from tests.checks import check_official

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("topk", [None, 2])
def test_bls_orchestration_reproduces_the_official_outputs(parity_engine_dir, parity, parity_image, topk):
    """Every graph a BLS call to its own model (here ONNX Runtime behind the fake): the official outputs,
    with CER and the label map as model calls too."""
    manifest = Manifest.load(parity_engine_dir)
    pb = fake_triton.make({g: parity_engine_dir / f for g, f in manifest.graphs.items()})
    backend = TritonBLSBackend(parity_engine_dir, pb_utils=pb).activate()
    pred = Predictor(backend, topk=topk)
    with pb.executing():  # as Triton runs it: inside the sed model's execute
        pred.set_classes(parity["classes"])
        out = pred.predict(parity_image)
    check_official(out, parity, topk)
    assert "sed_labels" in pb.CALLS and all(c.startswith("sed_") for c in pb.CALLS)
    assert ("sed_cer1" in pb.CALLS) == (topk is not None)


def test_bls_errors_are_one_line_engine_errors(parity_engine_dir, parity, parity_image):
    from sed_trt.runtime.errors import EngineError

    pb = fake_triton.make({})
    backend = TritonBLSBackend(parity_engine_dir, pb_utils=pb).activate()
    pred = Predictor(backend)
    pred.set_text_features(["a", "b"], np.zeros((2, 80, 48), np.float32))
    with pb.executing(), pytest.raises(EngineError, match="sed_image_encoder: Request for unknown model"):
        pred.predict(parity_image)


def test_the_fake_refuses_what_the_stub_refuses(parity_engine_dir):
    """BLS outside execute, and GPU outputs read as numpy: both raise in the real stub, so in the fake."""
    manifest = Manifest.load(parity_engine_dir)
    pb = fake_triton.make({g: parity_engine_dir / f for g, f in manifest.graphs.items()})
    rank = pb.Tensor("rank", np.array([0], np.int64))
    logits = pb.Tensor("aux_logits", np.zeros((1, 3, 24, 24), np.float32))
    request = pb.InferenceRequest("sed_cer1", ["keep"], [logits, rank])
    with pytest.raises(pb.PythonBackendException, match="only supported during the 'execute'"):
        request.exec()
    with pb.executing():
        gpu = request.exec()
        cpu = pb.InferenceRequest(
            "sed_cer1", ["keep"], [logits, rank], preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        ).exec()
    with pytest.raises(pb.PythonBackendException, match="stored in GPU"):
        pb.get_output_tensor_by_name(gpu, "keep").as_numpy()
    assert pb.get_output_tensor_by_name(cpu, "keep").as_numpy().shape == (3,)


def test_the_bls_form_loads_and_answers_like_predict(parity_engine_dir, parity, parity_image, tmp_path, monkeypatch):
    """The bls form's sed model initializes without BLS (no warm-up there) and answers in execute
    with the labels sed-trt predict gives."""
    from sed_trt.runtime.deployment import Deployment
    from sed_trt.serve.repository import BLS_PREFIX, write_repository
    from sed_trt.serve.triton_model import STATE_DIR_ENV, TritonPythonModel
    from tests.checks import fake_plans

    fake = tmp_path / "engines"
    manifest = fake_plans(parity_engine_dir, fake)
    write_repository(tmp_path / "repo", Deployment(engine_dir=str(fake), topk=2), form="bls")
    pb = fake_triton.make({g: parity_engine_dir / f for g, f in manifest.graphs.items()}, prefix=BLS_PREFIX)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    model = TritonPythonModel()
    config = {"parameters": {"settings": {"string_value": "settings.json"}}}
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(tmp_path / "repo" / "sed"),
            "model_instance_kind": "GPU",
        }
    )
    assert pb.CALLS == []  # nothing ran before execute
    classes = np.array([[c.encode() for c in parity["classes"]]], dtype=object)
    with pb.executing():
        (response,) = model.execute([pb.Request({"image": parity_image[None], "classes": classes})])
    out = {t.name(): t.as_numpy() for t in response.output_tensors}
    assert out["error"][0, 0] == b"", out["error"]
    np.testing.assert_array_equal(out["kept"][0], parity["expected"]["cer_k2_kept"])
    assert (out["labels"][0] == parity["expected"]["cer_k2_labels"]).mean() >= 0.999
    model.finalize()


def test_sed_model_serves_a_python_repository(parity_engine_dir, parity, parity_image, tmp_path, monkeypatch):
    from sed_trt.runtime.deployment import Deployment
    from sed_trt.serve.repository import write_repository
    from sed_trt.serve.triton_model import STATE_DIR_ENV, TritonPythonModel

    pb = fake_triton.make()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    write_repository(repo, Deployment(engine_dir=str(parity_engine_dir)))  # batch: the export's (1)
    model = TritonPythonModel()
    config = {"parameters": {"settings": {"string_value": "settings.json"}}}
    model.initialize(
        {"model_config": json.dumps(config), "model_repository": str(repo / "sed"), "model_instance_kind": "CPU"}
    )
    assert (tmp_path / next(p.name for p in tmp_path.glob("inflight.*"))).read_text() == "0"
    classes = np.array([[c.encode() for c in parity["classes"]]], dtype=object)
    requests = [
        pb.Request({"image": parity_image[None], "classes": classes, "topk": np.array([[2]], np.int32)}),
        pb.Request({"image": parity_image[None], "classes": np.zeros((1, 0), dtype=object)}),
    ]
    good, bad = model.execute(requests)
    out = {t.name(): t.as_numpy() for t in good.output_tensors}
    np.testing.assert_array_equal(out["kept"][0], parity["expected"]["cer_k2_kept"])
    assert (out["labels"][0] == parity["expected"]["cer_k2_labels"]).mean() >= 0.999 and out["error"][0, 0] == b""
    assert b"empty" in {t.name(): t.as_numpy() for t in bad.output_tensors}["error"][0, 0]
    assert not set(model.service.backend._runners) & set(DEVICE_GRAPHS)
    model.finalize()
    assert not list(tmp_path.glob("inflight.*"))


def test_bls_text_features_are_keyed_on_the_plan_that_computes_them(parity_engine_dir, tmp_path):
    """The bls form's text encoder is a TensorRT plan: a rebuilt plan (another TensorRT, fp16)
    must not reuse features cached for the old one, though the ONNX graph is the same."""
    from tests.checks import fake_plans

    manifest = fake_plans(parity_engine_dir, tmp_path / "plans")
    before = TritonBLSBackend(tmp_path / "plans").text_fingerprint
    manifest.engines["text_encoder"].sha256 = "ab" * 32
    manifest.save(tmp_path / "plans")
    after = TritonBLSBackend(tmp_path / "plans").text_fingerprint
    assert ":engine:" in before and before != after and after.endswith("ab" * 8)
