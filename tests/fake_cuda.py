"""Host memory behind the :class:`~runtime.backends.cuda_ops.DeviceMemory` interface, for CPU-only CI.

Pointers are real host addresses (256-byte aligned, like cudaMalloc's), so the fake TensorRT
and the ops read and write exactly the bytes the backend's pointer arithmetic names. It is
strict where CUDA would be undefined: a double free, a free of an unknown pointer, and an
access outside every live allocation raise.
"""

from __future__ import annotations

import ctypes

import numpy as np

from sed_trt.runtime.backends.cuda_ops import ALIGNMENT, DeviceMemory


class HostMemory(DeviceMemory):
    """Allocations in numpy buffers; copies with memmove; the stream is a token."""

    def __init__(self, device_index: int = 0, properties: tuple[str, str] = ("Fake GPU", "9.0")) -> None:
        self.device_index = device_index
        self._properties = properties
        self._buffers: dict[int, tuple[np.ndarray, int]] = {}  # ptr -> (backing buffer, nbytes)
        self.copies = 0
        self.downloads: list[int] = []  # bytes of every device-to-host copy, in order
        self.closed = False

    @property
    def stream_handle(self) -> int:
        return 0x5EED

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
        buf = np.empty(max(nbytes, ALIGNMENT) + ALIGNMENT, dtype=np.uint8)
        ptr = buf.ctypes.data + (-buf.ctypes.data) % ALIGNMENT
        self._buffers[ptr] = (buf, nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        if self.closed:
            return
        if ptr not in self._buffers:
            raise AssertionError(f"free of 0x{ptr:x}, which is not a live allocation")
        del self._buffers[ptr]

    def upload(self, dst: int, src: np.ndarray) -> None:
        self._check(dst, src.nbytes)
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def download(self, dst: np.ndarray, src: int) -> None:
        self.engine_read(dst, src)
        self.downloads.append(dst.nbytes)

    def engine_read(self, dst: np.ndarray, src: int) -> None:
        """What a (fake) engine reads of its inputs: on the device, not a transfer."""
        self._check(src, dst.nbytes)
        ctypes.memmove(dst.ctypes.data, src, dst.nbytes)

    def engine_write(self, dst: int, src: np.ndarray) -> None:
        self.upload(dst, src)

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        self._check(dst, dpitch * (height - 1) + width)
        self._check(src, spitch * (height - 1) + width)
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        self.copies += 1

    def memset0(self, ptr: int, nbytes: int) -> None:
        self._check(ptr, nbytes)
        ctypes.memset(ptr, 0, nbytes)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
