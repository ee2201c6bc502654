"""Host memory behind the :class:`~runtime.backends.cuda_ops.DeviceMemory` interface, for CPU-only CI.

Pointers are real host addresses (256-byte aligned, like cudaMalloc's), so the fake TensorRT
and the ops read and write exactly the bytes the backend's pointer arithmetic names. It is
strict where CUDA would be undefined: a double free, a free of an unknown pointer, and an
access outside every live allocation raise.

Stream capture (CUDA graphs) follows the CUDA programming guide's rules ("Stream Capture";
docs.nvidia.com/dl-cuda-graph, "Constraints"): while the stream captures, work is recorded, not
run; a synchronisation or a device-to-host wait on the capturing stream is refused
(``cudaErrorStreamCaptureUnsupported``) and invalidates the capture, so ``end_capture`` fails;
a copy from pageable host memory is refused the same way; a second ``begin_capture`` is refused.
It is stricter where sed-trt promised more: no allocation or free inside a capture. A replay
runs the recorded work over the recorded addresses, as a real graph does.

Each memory has a device; ``bind`` makes it the calling thread's current device (CUDA's current
device is per thread), and ``current_device`` says which is current, for the fake TensorRT's
check that work is queued on a stream of the device its engine lives on.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from sed_trt.runtime.backends.cuda_ops import ALIGNMENT, DeviceMemory
from sed_trt.runtime.errors import DeviceError

_CURRENT = threading.local()


def current_device() -> int:
    """The calling thread's current device (CUDA's default: 0)."""
    return getattr(_CURRENT, "device", 0)


def stream_device(handle: int) -> int:
    """The device a fake stream handle belongs to."""
    return handle - 0x5EED


class FakeGraph:
    """An instantiated graph: the recorded work, replayed in order."""

    def __init__(self, work: list[Callable[[], None]]) -> None:
        self.work = work
        self.destroyed = False


class HostMemory(DeviceMemory):
    """Allocations in numpy buffers; copies with memmove; the stream is a token."""

    def __init__(self, device_index: int = 0, properties: tuple[str, str] = ("Fake GPU", "9.0")) -> None:
        self.device_index = device_index
        self._properties = properties
        self._buffers: dict[int, tuple[np.ndarray, int]] = {}  # ptr -> (backing buffer, nbytes)
        self.copies = 0
        self.downloads: list[int] = []  # bytes of every device-to-host copy, in order
        self.closed = False
        self.capture: list[Callable[[], None]] | None = None  # the work recorded while capturing
        self.capture_error: str | None = None
        self.launches = 0

    @property
    def stream_handle(self) -> int:
        return 0x5EED + self.device_index

    def bind(self) -> None:
        _CURRENT.device = self.device_index

    @property
    def capturing(self) -> bool:
        return self.capture is not None

    def _refuse_in_capture(self, what: str) -> None:
        if self.capture is not None:
            self.capture_error = f"{what} while the stream captures (cudaErrorStreamCaptureUnsupported)"
            raise DeviceError(f"CUDA {self.capture_error}")

    def record(self, work: Callable[[], None]) -> None:
        """Run ``work`` now, or record it for the graph being captured."""
        if self.capture is not None:
            self.capture.append(work)
        else:
            work()

    def begin_capture(self) -> None:
        if self.capture is not None:
            raise DeviceError("CUDA cudaStreamBeginCapture on a capturing stream (cudaErrorIllegalState)")
        self.capture, self.capture_error = [], None

    def end_capture(self) -> Any:
        if self.capture is None:
            raise DeviceError("CUDA cudaStreamEndCapture without a capture (cudaErrorIllegalState)")
        work, error = self.capture, self.capture_error
        self.capture = None
        if error is not None:
            raise DeviceError(f"CUDA cudaStreamEndCapture: the capture was invalidated ({error})")
        return FakeGraph(work)

    def abort_capture(self) -> None:
        self.capture, self.capture_error = None, None

    def launch(self, graph: Any) -> None:
        self._refuse_in_capture("cudaGraphLaunch of another graph")
        assert isinstance(graph, FakeGraph) and not graph.destroyed, "launch of a destroyed or foreign graph"
        for work in graph.work:
            work()
        self.launches += 1

    def destroy_graph(self, graph: Any) -> None:
        assert isinstance(graph, FakeGraph) and not graph.destroyed, "double destroy of a graph"
        graph.destroyed = True

    def properties(self) -> tuple[str, str]:
        return self._properties

    @property
    def live_bytes(self) -> int:
        return sum(n for _, n in self._buffers.values())

    def _check(self, ptr: int, nbytes: int) -> None:
        for start, (_, n) in self._buffers.items():
            if start <= ptr and ptr + nbytes <= start + max(n, ALIGNMENT):
                return
        raise AssertionError(f"access of {nbytes} bytes at 0x{ptr:x} is outside every live allocation")

    def alloc(self, nbytes: int) -> int:
        assert self.capture is None, "sed-trt allocates nothing inside a capture"
        buf = np.empty(max(nbytes, ALIGNMENT) + ALIGNMENT, dtype=np.uint8)
        ptr = buf.ctypes.data + (-buf.ctypes.data) % ALIGNMENT
        self._buffers[ptr] = (buf, nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        if self.closed:
            return
        if ptr not in self._buffers:
            raise AssertionError(f"free of 0x{ptr:x}, which is not a live allocation")
        assert self.capture is None, "sed-trt frees nothing inside a capture"
        del self._buffers[ptr]

    def upload(self, dst: int, src: np.ndarray) -> None:
        self._refuse_in_capture("cudaMemcpyAsync from pageable host memory")
        self._check(dst, src.nbytes)
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def download(self, dst: np.ndarray, src: int) -> None:
        self._refuse_in_capture("cudaMemcpyAsync to the host and cudaStreamSynchronize")
        self.engine_read(dst, src)
        self.downloads.append(dst.nbytes)

    def engine_read(self, dst: np.ndarray, src: int) -> None:
        """What a (fake) engine reads of its inputs: on the device, not a transfer."""
        self._check(src, dst.nbytes)
        ctypes.memmove(dst.ctypes.data, src, dst.nbytes)

    def engine_write(self, dst: int, src: np.ndarray) -> None:
        self._check(dst, src.nbytes)
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        self._check(dst, dpitch * (height - 1) + width)
        self._check(src, spitch * (height - 1) + width)

        def work() -> None:
            self._check(dst, dpitch * (height - 1) + width)  # a replay after a free would be out of bounds
            self._check(src, spitch * (height - 1) + width)
            for row in range(height):
                ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
            self.copies += 1

        self.record(work)

    def memset0(self, ptr: int, nbytes: int) -> None:
        self._check(ptr, nbytes)

        def work() -> None:
            self._check(ptr, nbytes)
            ctypes.memset(ptr, 0, nbytes)

        self.record(work)

    def synchronize(self) -> None:
        self._refuse_in_capture("cudaStreamSynchronize")

    def close(self) -> None:
        self.closed = True
