"""Device arrays on raw CUDA memory and the predictor's array ops on them (no torch).

The TensorRT runtime needs only tensorrt, cuda-python and numpy: :class:`CudaMemory` wraps
the few CUDA runtime calls it uses (stream-ordered allocation, copies, memset, one
non-blocking stream per device), :class:`DeviceArray` is a shape and dtype over a device
pointer, and :class:`CudaOps` implements :class:`~runtime.backends.base.ArrayOps` with
copies only. Class chunks of a (1, T, ...) tensor are pointer offsets; gathers of CER
survivors are one 2-D copy per run of consecutive classes; running sums are added by the
graphs themselves; CER and the label map run as graphs (the predictor's device path), so
only a (T,) keep mask and the label map are downloaded. Every copy is queued on the
memory's stream, in order with the engines.

:class:`DeviceMemory` is the seam: tests run the same ops over host memory (``tests/fake_cuda.py``).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
from typing import Any

import numpy as np

from sed_trt.runtime.backends.base import ArrayOps
from sed_trt.runtime.errors import BackendUnavailableError, DeviceError, install_hint

log = logging.getLogger("sed_trt")

ALIGNMENT = 256  # TensorRT's setTensorAddress: every pointer 256-byte aligned


class DeviceMemory(abc.ABC):
    """Allocation and copies on one device, all queued on one stream in call order."""

    device_index: int = 0

    @property
    @abc.abstractmethod
    def stream_handle(self) -> int:
        """The stream every call is queued on (a non-default stream), as an integer handle."""

    def bind(self) -> None:  # noqa: B027 (host memory needs no current device)
        """Make this device current in the calling thread (CUDA's current device is per thread)."""

    @abc.abstractmethod
    def properties(self) -> tuple[str, str]:
        """(GPU name, compute capability 'major.minor')."""

    @abc.abstractmethod
    def alloc(self, nbytes: int) -> int:
        """A pointer to ``nbytes`` of device memory, 256-byte aligned, ordered on the stream."""

    @abc.abstractmethod
    def free(self, ptr: int) -> None:
        """Release ``ptr`` after the work queued so far (stream-ordered)."""

    @abc.abstractmethod
    def upload(self, dst: int, src: np.ndarray) -> None:
        """Queue a host-to-device copy of the contiguous ``src`` (kept alive until the next sync)."""

    @abc.abstractmethod
    def download(self, dst: np.ndarray, src: int) -> None:
        """Copy device memory into the contiguous ``dst`` and wait for it."""

    @abc.abstractmethod
    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        """Queue a device-to-device copy of ``height`` rows of ``width`` bytes."""

    @abc.abstractmethod
    def memset0(self, ptr: int, nbytes: int) -> None:
        """Queue zero-filling ``nbytes`` at ``ptr``."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Release the stream (buffers free themselves)."""

    # CUDA graphs (stream capture). Between begin_capture and end_capture nothing may wait for the
    # device or copy from host memory (CUDA refuses both while a stream captures), and sed-trt
    # allocates nothing: a capture records copies and engine launches over fixed addresses.
    def begin_capture(self) -> None:
        """Start recording the work queued on the stream (thread-local capture mode)."""
        raise DeviceError("this device memory cannot capture CUDA graphs")

    def end_capture(self) -> Any:
        """Stop recording; the instantiated graph (raises DeviceError when the capture failed)."""
        raise DeviceError("this device memory cannot capture CUDA graphs")

    def abort_capture(self) -> None:  # noqa: B027 (nothing to abort by default)
        """End a capture that failed, discarding what it recorded and clearing the error."""

    def launch(self, graph: Any) -> None:
        """Queue one replay of an instantiated graph on the stream."""
        raise DeviceError("this device memory cannot launch CUDA graphs")

    def destroy_graph(self, graph: Any) -> None:  # noqa: B027 (nothing to destroy by default)
        """Release an instantiated graph (after the work queued so far)."""


class DeviceArray:
    """A C-contiguous float32/int32/int64 array in device memory: ``shape``, ``dtype``, ``ptr``.

    An owner frees its allocation when collected (stream-ordered, so after every queued use);
    a view keeps its owner alive.
    """

    __slots__ = ("_owner", "dtype", "memory", "ptr", "shape")

    def __init__(
        self, memory: DeviceMemory, shape: tuple[int, ...], dtype: Any, ptr: int, owner: DeviceArray | None = None
    ) -> None:
        self.memory = memory
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.ptr = int(ptr)
        self._owner = owner  # None: this array owns ptr

    @classmethod
    def empty(cls, memory: DeviceMemory, shape: tuple[int, ...], dtype: Any = np.float32) -> DeviceArray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return cls(memory, shape, dtype, memory.alloc(nbytes))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def view(self, shape: tuple[int, ...], byte_offset: int = 0) -> DeviceArray:
        """The same memory from ``byte_offset`` with another shape (no copy)."""
        return DeviceArray(self.memory, shape, self.dtype, self.ptr + byte_offset, owner=self._owner or self)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("a DeviceArray lives on the GPU: copy it with CudaOps.to_numpy()")

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr=0x{self.ptr:x})"

    def __del__(self) -> None:
        if self._owner is None and self.ptr:
            with contextlib.suppress(Exception):  # interpreter shutdown or a lost device: nothing left to free
                self.memory.free(self.ptr)
            self.ptr = 0


def _split(shape: tuple[int, ...], axis: int, itemsize: int) -> tuple[int, int]:
    """(rows before ``axis``, bytes of one index along ``axis``) of a C-contiguous shape."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) * itemsize
    return outer, inner


class CudaOps(ArrayOps):
    """:class:`ArrayOps` over :class:`DeviceArray`: copies on the device, planned on the host."""

    def __init__(self, memory: DeviceMemory) -> None:
        self.memory = memory

    def device_array(self, x: DeviceArray | np.ndarray) -> DeviceArray:
        """``x`` on the device (uploads a host array)."""
        return x if isinstance(x, DeviceArray) else self.from_numpy(x)

    def from_numpy(self, a: np.ndarray) -> DeviceArray:
        a = np.ascontiguousarray(a)
        out = DeviceArray.empty(self.memory, a.shape, a.dtype)
        if a.nbytes:
            self.memory.upload(out.ptr, a)
        return out

    def to_numpy(self, x: DeviceArray | np.ndarray) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        out = np.empty(x.shape, dtype=x.dtype)
        if out.nbytes:
            self.memory.download(out, x.ptr)
        return out

    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> DeviceArray:
        return DeviceArray.empty(self.memory, shape, dtype)

    def zeros(self, shape: tuple[int, ...]) -> DeviceArray:
        out = DeviceArray.empty(self.memory, shape)
        self.memory.memset0(out.ptr, out.nbytes)
        return out

    def narrow(self, x: DeviceArray, axis: int, start: int, stop: int) -> DeviceArray:
        shape = (*x.shape[:axis], stop - start, *x.shape[axis + 1 :])
        outer, inner = _split(x.shape, axis, x.dtype.itemsize)
        if outer == 1 or (start == 0 and stop == x.shape[axis]):
            return x.view(shape, start * inner)  # contiguous: a pointer offset
        out = DeviceArray.empty(self.memory, shape, x.dtype)
        width = (stop - start) * inner
        self.memory.copy2d(out.ptr, width, x.ptr + start * inner, x.shape[axis] * inner, width, outer)
        return out

    def write(self, dst: DeviceArray, axis: int, start: int, src: DeviceArray | np.ndarray) -> None:
        src = self.device_array(src)
        outer, inner = _split(dst.shape, axis, dst.dtype.itemsize)
        width = src.shape[axis] * inner
        if width and outer:
            self.memory.copy2d(dst.ptr + start * inner, dst.shape[axis] * inner, src.ptr, width, width, outer)

    def take(self, x: DeviceArray, idx: np.ndarray, axis: int) -> DeviceArray:
        idx = np.asarray(idx, dtype=np.int64)
        out = DeviceArray.empty(self.memory, (*x.shape[:axis], len(idx), *x.shape[axis + 1 :]), x.dtype)
        outer, inner = _split(x.shape, axis, x.dtype.itemsize)
        if not len(idx) or not outer or not inner:
            return out
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # runs of consecutive classes: one copy each
        for run_start, run in zip(np.concatenate([[0], breaks]), np.split(idx, breaks)):
            self.memory.copy2d(
                out.ptr + int(run_start) * inner,
                len(idx) * inner,
                x.ptr + int(run[0]) * inner,
                x.shape[axis] * inner,
                len(run) * inner,
                outer,
            )
        return out

    def synchronize(self) -> None:
        self.memory.synchronize()


def import_cudart() -> Any:
    """cuda-python's runtime bindings, with a one-line error that says what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError(f"the tensorrt backend needs cuda-python: {install_hint('trt')}") from None
    return cudart


class CudaMemory(DeviceMemory):
    """:class:`DeviceMemory` on CUDA device ``device_index`` through cuda-python's runtime API."""

    def __init__(self, device_index: int = 0, *, cudart: Any = None) -> None:
        self.cudart = cudart or import_cudart()
        self.device_index = int(device_index)
        err, count = self.cudart.cudaGetDeviceCount()
        if err != self.cudart.cudaError_t.cudaSuccess or not count:
            raise BackendUnavailableError(f"no CUDA GPU is visible ({self._name(err) if err else 'no devices'})")
        if not 0 <= self.device_index < count:
            raise BackendUnavailableError(f"CUDA device {self.device_index} does not exist (this machine has {count})")
        self._bound = threading.local()
        self._stream = self._call("cudaStreamCreateWithFlags", self.cudart.cudaStreamNonBlocking)
        self._keep: list[np.ndarray] = []  # host sources of queued uploads
        try:  # keep freed blocks in the stream-ordered pool instead of returning them to the driver each sync
            from cuda.bindings import driver

            pool = self._call("cudaDeviceGetDefaultMemPool", self.device_index)
            self.cudart.cudaMemPoolSetAttribute(
                pool, self.cudart.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold, driver.cuuint64_t(2**63)
            )
        except Exception as exc:  # a speed setting only
            log.debug("could not raise the CUDA memory pool's release threshold: %s", exc)

    def _name(self, err: Any) -> str:
        try:
            return self.cudart.cudaGetErrorName(err)[1].decode()
        except Exception:
            return str(err)

    def _call(self, fn: str, *args: Any) -> Any:
        if not getattr(self._bound, "done", False):
            self.bind()
        result = getattr(self.cudart, fn)(*args)
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise DeviceError(f"CUDA {fn} failed on device {self.device_index}: {self._name(err)}")
        return rest[0] if len(rest) == 1 else (rest or None)

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def bind(self) -> None:
        self._bound.done = True
        err = self.cudart.cudaSetDevice(self.device_index)[0]
        if err != self.cudart.cudaError_t.cudaSuccess:
            self._bound.done = False
            raise DeviceError(f"CUDA cudaSetDevice({self.device_index}) failed: {self._name(err)}")

    def properties(self) -> tuple[str, str]:
        """(GPU name, compute capability 'major.minor')."""
        props = self._call("cudaGetDeviceProperties", self.device_index)
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return name, f"{props.major}.{props.minor}"

    def alloc(self, nbytes: int) -> int:
        return int(self._call("cudaMallocAsync", max(int(nbytes), ALIGNMENT), self._stream))

    def free(self, ptr: int) -> None:
        self._call("cudaFreeAsync", ptr, self._stream)

    def upload(self, dst: int, src: np.ndarray) -> None:
        self._keep.append(src)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, self._stream)

    def download(self, dst: np.ndarray, src: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, self._stream)
        self.synchronize()

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        if height == 1:
            self._call("cudaMemcpyAsync", dst, src, width, kind, self._stream)
        else:
            self._call("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, kind, self._stream)

    def memset0(self, ptr: int, nbytes: int) -> None:
        self._call("cudaMemsetAsync", ptr, 0, nbytes, self._stream)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self._stream)
        self._keep.clear()

    def begin_capture(self) -> None:
        # Thread-local mode, as trtexec captures: other threads' CUDA calls are not checked
        # against this capture (the server's other threads keep running).
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", self._stream, mode)

    def end_capture(self) -> Any:
        graph = self._call("cudaStreamEndCapture", self._stream)
        try:
            return self._call("cudaGraphInstantiate", graph, 0)
        finally:
            self._call("cudaGraphDestroy", graph)

    def abort_capture(self) -> None:
        with contextlib.suppress(Exception):  # the capture is invalid: end it, drop its graph, clear the error
            err, graph = self.cudart.cudaStreamEndCapture(self._stream)
            if err == self.cudart.cudaError_t.cudaSuccess and graph is not None:
                self.cudart.cudaGraphDestroy(graph)
        with contextlib.suppress(Exception):
            self.cudart.cudaGetLastError()

    def launch(self, graph: Any) -> None:
        self._call("cudaGraphLaunch", graph, self._stream)

    def destroy_graph(self, graph: Any) -> None:
        self._call("cudaGraphExecDestroy", graph)

    def close(self) -> None:
        if self._stream is not None:
            self.synchronize()
            self._call("cudaStreamDestroy", self._stream)
            self._stream = None
