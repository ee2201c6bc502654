"""The CUDA layer (cuda-python, no torch) on a real GPU; skipped with the reason elsewhere.

The same checks as the host-memory tests, on device memory: chunk views, strided copies,
gathers, and the whole TensorRT backend orchestration with the fake TensorRT's engines
reading and writing real device pointers (they compute on the host; real TensorRT runs in
tests/test_gpu.py).
"""

from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest

from runtime.errors import BackendUnavailableError


def _cuda_reason() -> str | None:
    try:
        from runtime.backends.cuda_ops import CudaMemory

        CudaMemory(0).close()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


REASON = _cuda_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU: {REASON}")]


@pytest.fixture
def memory():
    from runtime.backends.cuda_ops import CudaMemory

    mem = CudaMemory(0)
    yield mem
    gc.collect()
    mem.close()


def test_device_copies_match_numpy(memory):
    from runtime.backends.cuda_ops import ALIGNMENT, CudaOps

    ops = CudaOps(memory)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 5)).astype(np.float32)
    dx = ops.from_numpy(x)
    assert dx.ptr % ALIGNMENT == 0
    np.testing.assert_array_equal(ops.to_numpy(dx), x)
    np.testing.assert_array_equal(ops.to_numpy(ops.narrow(dx, 1, 2, 6)), x[:, 2:6])
    idx = np.array([0, 1, 2, 4, 6])
    np.testing.assert_array_equal(ops.to_numpy(ops.take(dx, idx, 1)), x[:, idx])
    out = ops.zeros((2, 9, 3, 5))
    ops.write(out, 1, 4, ops.narrow(dx, 1, 0, 5))
    expected = np.zeros((2, 9, 3, 5), np.float32)
    expected[:, 4:9] = x[:, :5]
    np.testing.assert_array_equal(ops.to_numpy(out), expected)
    tokens = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(ops.to_numpy(ops.from_numpy(tokens)), tokens)
    name, capability = memory.properties()
    assert name and capability.count(".") == 1


def test_backend_on_device_memory_reproduces_the_official_outputs(parity_engine_dir, parity, parity_image, tmp_path):
    from export.trt_build import build_engines
    from runtime.backends import create_backend
    from runtime.backends.cuda_ops import CudaMemory
    from runtime.predictor import Predictor
    from tests import fake_tensorrt

    memory = CudaMemory(0)
    trt = fake_tensorrt.make()
    mp = pytest.MonkeyPatch()
    fake_tensorrt.install(trt, mp)
    try:
        work = tmp_path / "engines"
        shutil.copytree(parity_engine_dir, work)
        build_engines(work, trt=trt, gpu=memory.properties(), progress=False)
        fake_tensorrt.use_memory(trt, memory)
        backend = create_backend("tensorrt", engine_dir=work, trt_module=trt, memory=memory).activate()
        exp = parity["expected"]
        for topk in (None, 2):
            pred = Predictor(backend, topk=topk)
            pred.set_classes(parity["classes"])
            out = pred.predict(parity_image)
            if topk is None:
                assert (out.labels == exp["labels_pool1"]).mean() >= 0.999
                np.testing.assert_allclose(out.probs, 1 / (1 + np.exp(-exp["logits_pool1"])), atol=1e-4)
            else:
                np.testing.assert_array_equal(out.kept, exp[f"cer_k{topk}_kept"])
                np.testing.assert_allclose(out.probs, exp[f"cer_k{topk}_probs"], atol=1e-4)
        backend.deactivate()
    finally:
        mp.undo()
        fake_tensorrt.reset_polygraphy()
        gc.collect()
        memory.close()
