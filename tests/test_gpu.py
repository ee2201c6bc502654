"""Real TensorRT on a GPU: engines vs the official parity vectors. Skipped (with the reason) where either is missing."""

from __future__ import annotations

import shutil

import pytest

from sed_trt.export.trt_build import tensorrt_unavailable_reason
from tests.checks import check_official

REASON = tensorrt_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.trt,
    pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and a GPU: {REASON}"),
]


def test_engines_reproduce_the_official_outputs(parity_engine_dir, parity, parity_image, tmp_path):
    from sed_trt.export.trt_build import build_engines
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.predictor import Predictor

    work = tmp_path / "engines"
    shutil.copytree(parity_engine_dir, work)
    build_engines(work, progress=False)  # fp32, TF32 off
    backend = create_backend("tensorrt", engine_dir=work).activate()
    for topk in (None, 1, 8):
        pred = Predictor(backend, topk=topk)
        pred.set_classes(parity["classes"])
        check_official(pred.predict(parity_image), parity, topk, atol=1e-3)
    backend.deactivate()


def test_engines_with_cuda_graphs_answer_as_plain_enqueues(parity_engine_dir, parity, parity_image, tmp_path):
    """--cuda-graphs on real TensorRT: captured and replayed buckets give the plain enqueue's labels."""
    from sed_trt.export.trt_build import build_engines
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.predictor import Predictor

    work = tmp_path / "engines"
    shutil.copytree(parity_engine_dir, work)
    build_engines(work, progress=False)
    want = {}
    with create_backend("tensorrt", engine_dir=work) as backend:
        for topk in (None, 8):
            pred = Predictor(backend, topk=topk)
            pred.set_classes(parity["classes"])
            want[topk] = pred.predict(parity_image).labels
    with create_backend("tensorrt", engine_dir=work, cuda_graphs=True) as backend:
        for topk in (None, 8):
            pred = Predictor(backend, topk=topk)
            pred.set_classes(parity["classes"])
            for _ in range(2):
                out = pred.predict(parity_image)
                assert (out.labels == want[topk]).all()
                check_official(out, parity, topk, atol=1e-3)
        print("CUDA graphs:", backend.graph_stats)
