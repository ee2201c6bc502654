"""Real TensorRT on a GPU: engines vs ONNX Runtime. Skipped (with the reason) where either is missing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from export.trt_build import tensorrt_unavailable_reason

REASON = tensorrt_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.trt,
    pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and a GPU: {REASON}"),
]


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engines_match_onnxruntime(parity_engine_dir, parity, parity_image, tmp_path, precision, atol):
    from export.trt_build import build_engines
    from runtime.backends import create_backend
    from runtime.errors import EngineError
    from runtime.predictor import Predictor

    work = tmp_path / "engines"
    shutil.copytree(parity_engine_dir, work)
    try:
        build_engines(work, precision=precision, progress=False)
    except EngineError as exc:
        if precision == "fp16" and "TensorRT 11" in str(exc):
            pytest.skip(str(exc))
        raise
    for topk in (None, 1, 8):
        preds = []
        for name in ("tensorrt", "onnxruntime"):
            backend = create_backend(name, engine_dir=work).activate()
            p = Predictor(backend, topk=topk)
            p.set_classes(parity["classes"])
            preds.append(p.predict(parity_image))
            backend.deactivate()
        np.testing.assert_allclose(preds[0].probs, preds[1].probs, atol=atol)
        if precision == "fp32":
            np.testing.assert_array_equal(preds[0].kept, preds[1].kept)
