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
    pred.set_classes(parity["classes"])
    out = pred.predict(parity_image)
    check_official(out, parity, topk)
    assert "sed_labels" in pb.CALLS and all(c.startswith("sed_") for c in pb.CALLS)
    assert ("sed_cer1" in pb.CALLS) == (topk is not None)


def test_bls_errors_are_one_line_engine_errors(parity_engine_dir, parity, parity_image):
    from sed_trt.runtime.errors import EngineError

    backend = TritonBLSBackend(parity_engine_dir, pb_utils=fake_triton.make({})).activate()
    pred = Predictor(backend)
    pred.set_text_features(["a", "b"], np.zeros((2, 80, 48), np.float32))
    with pytest.raises(EngineError, match="sed_image_encoder: Request for unknown model"):
        pred.predict(parity_image)


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
