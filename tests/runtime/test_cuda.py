"""The CUDA layer (cuda-python, no torch) on a real GPU; skipped with the reason elsewhere.

The same checks as the host-memory tests, on device memory: chunk views, strided copies,
gathers, and the whole TensorRT backend orchestration with the fake TensorRT's engines
reading and writing real device pointers (they compute on the host; real TensorRT runs in
tests/test_gpu.py).
"""

from __future__ import annotations

import contextlib
import gc
import shutil

import numpy as np
import pytest

from sed_trt.runtime.errors import BackendUnavailableError
from tests.checks import check_device_copies, check_official


def _cuda_reason() -> str | None:
    try:
        from sed_trt.runtime.backends.cuda_ops import CudaMemory

        CudaMemory(0).close()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


REASON = _cuda_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU: {REASON}")]


@pytest.fixture
def memory():
    from sed_trt.runtime.backends.cuda_ops import CudaMemory

    mem = CudaMemory(0)
    yield mem
    gc.collect()
    mem.close()


def test_device_copies_match_numpy(memory):
    from sed_trt.runtime.backends.cuda_ops import ALIGNMENT, CudaOps

    ops = CudaOps(memory)
    check_device_copies(ops)
    assert all(ops.from_numpy(np.zeros(n, np.float32)).ptr % ALIGNMENT == 0 for n in (1, 3, 1000))
    name, capability = memory.properties()
    assert name and capability.count(".") == 1


@contextlib.contextmanager
def _fake_tensorrt_backend(parity_engine_dir, tmp_path, **options):
    """The TensorRT backend with the fake TensorRT's engines over real device memory (activated)."""
    from sed_trt.export.trt_build import build_engines
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.backends.cuda_ops import CudaMemory
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
        backend = create_backend("tensorrt", engine_dir=work, trt_module=trt, memory=memory, **options).activate()
        yield backend
        backend.deactivate()
    finally:
        mp.undo()
        fake_tensorrt.reset_polygraphy()
        gc.collect()
        memory.close()


def test_backend_on_device_memory_reproduces_the_official_outputs(parity_engine_dir, parity, parity_image, tmp_path):
    from sed_trt.runtime.predictor import Predictor

    with _fake_tensorrt_backend(parity_engine_dir, tmp_path) as backend:
        for topk in (None, 2):
            pred = Predictor(backend, topk=topk)
            pred.set_classes(parity["classes"])
            check_official(pred.predict(parity_image), parity, topk)


def test_cuda_graph_of_copies_replays_over_its_captured_addresses(memory):
    """The CUDA-graph layer the tensorrt backend's --cuda-graphs uses, on a real stream: a captured
    device-to-device copy replays over the captured addresses; a synchronisation inside a capture
    is refused and the failed capture is cleared (the stream works afterwards)."""
    from sed_trt.runtime.backends.cuda_ops import CudaOps
    from sed_trt.runtime.errors import DeviceError

    ops = CudaOps(memory)
    src, dst = ops.from_numpy(np.arange(64, dtype=np.float32)), ops.empty((64,))
    memory.synchronize()
    memory.begin_capture()
    memory.copy2d(dst.ptr, dst.nbytes, src.ptr, src.nbytes, src.nbytes, 1)
    graph = memory.end_capture()
    memory.launch(graph)
    np.testing.assert_array_equal(ops.to_numpy(dst), np.arange(64))
    memory.upload(src.ptr, np.full(64, 7, np.float32))
    memory.launch(graph)
    np.testing.assert_array_equal(ops.to_numpy(dst), np.full(64, 7))
    memory.destroy_graph(graph)
    memory.begin_capture()
    with pytest.raises(DeviceError):
        memory.synchronize()
    memory.abort_capture()
    np.testing.assert_array_equal(ops.to_numpy(src), np.full(64, 7))  # the stream is usable again


def test_tensorrt_backend_cuda_graphs_fall_back_over_device_memory(parity_engine_dir, parity, parity_image, tmp_path):
    """--cuda-graphs with the fake TensorRT over real device memory: the fake computes on the host,
    so it refuses every capture; the backend falls back to plain enqueues and still answers."""
    from sed_trt.runtime.predictor import Predictor

    with _fake_tensorrt_backend(parity_engine_dir, tmp_path, cuda_graphs=True) as backend:
        pred = Predictor(backend, topk=2)
        pred.set_classes(parity["classes"])
        check_official(pred.predict(parity_image), parity, 2)
        assert backend.graph_stats["failed_captures"] > 0 and backend.graph_stats["captures"] == 0
