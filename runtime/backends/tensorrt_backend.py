"""TensorRT backend: one engine and execution context per graph, torch CUDA buffers, one stream.

Per call it sets every input shape (T shrinks under CER) and every tensor address, sizes
outputs from ``get_tensor_shape`` and enqueues with ``execute_async_v3`` on a non-default
stream; the CER ops run in torch on the same stream, so the only host reads are the
survivor index sets. Written from ../shared/spec/tensorrt_facts.md and tested in CI
against a fake of the TensorRT API; it has not run on a real GPU.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from runtime.backends.base import EngineDirBackend
from runtime.errors import BackendUnavailableError, EngineError
from runtime.io_spec import GRAPH_NAMES

ALIGNMENT = 256  # setTensorAddress: pointers need 256-byte alignment


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` with a one-line error that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); on a machine with an NVIDIA GPU: pip install 'sed-trt[trt]'"
        ) from None
    return trt


def aligned_empty(torch: ModuleType, shape: tuple[int, ...], dtype: Any, device: str) -> Any:
    """An uninitialised tensor whose data pointer is 256-byte aligned (CUDA's allocator already
    aligns to 512; host allocators only to 64, hence the over-allocate-and-offset)."""
    x = torch.empty(shape, dtype=dtype, device=device)
    if x.data_ptr() % ALIGNMENT == 0:
        return x
    nbytes = max(x.numel() * x.element_size(), 1)
    buf = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8, device=device)
    offset = (-buf.data_ptr()) % ALIGNMENT
    return buf[offset : offset + x.numel() * x.element_size()].view(dtype).view(shape)


class TensorRTBackend(EngineDirBackend):
    """Runs the TensorRT plans listed in an engine directory's manifest."""

    name = "tensorrt"
    verify_kinds = ("engine", "tokenizer")
    text_file_kind = "engine"

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        backbone: str | None = None,
        device: str = "cuda",
        trt_module: ModuleType | None = None,
        check_gpu: bool = True,
    ) -> None:
        super().__init__(engine_dir, backbone=backbone)
        missing = [g for g in GRAPH_NAMES if g not in self.manifest.engines]
        if missing:
            raise EngineError(
                f"{str(self.engine_dir)!r} has no TensorRT engines for {missing}: build them on a GPU machine with "
                f"'sed-trt build-engines --engine-dir {self.engine_dir}' (or 'make engine')"
            )
        self.device = device
        self.check_gpu = check_gpu
        self._trt = trt_module
        self._engines: dict[str, Any] = {}
        self._contexts: dict[str, Any] = {}
        self._stream: Any = None
        self.calls: int = 0

    def _import(self) -> tuple[ModuleType, ModuleType]:
        try:
            import torch
        except ImportError:
            raise BackendUnavailableError("the tensorrt backend needs torch (CUDA build) for device buffers") from None
        if self._trt is None:
            self._trt = import_tensorrt()
        return self._trt, torch

    def _check_entry(self, graph: str, trt: ModuleType, torch: ModuleType) -> None:
        entry = self.manifest.engines[graph]
        if entry.tensorrt_version != str(trt.__version__):
            raise EngineError(
                f"engine {entry.file!r} was built with TensorRT {entry.tensorrt_version}, this is {trt.__version__}: rebuild it"
            )
        if self.check_gpu:
            major, minor = torch.cuda.get_device_capability(0)
            if entry.compute_capability != f"{major}.{minor}":
                raise EngineError(
                    f"engine {entry.file!r} was built for compute capability {entry.compute_capability} ({entry.gpu_name}), "
                    f"this GPU is {major}.{minor} ({torch.cuda.get_device_name(0)}): rebuild it"
                )

    def activate(self) -> TensorRTBackend:
        trt, torch = self._import()
        if self.check_gpu and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "the tensorrt backend needs an NVIDIA GPU (torch.cuda.is_available() is False)"
            )
        self.verify()
        from runtime.backends.torch_ops import TorchOps

        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        for graph in GRAPH_NAMES:
            self._check_entry(graph, trt, torch)
            plan = (self.engine_dir / self.manifest.engines[graph].file).read_bytes()
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(
                    f"TensorRT could not deserialize {self.manifest.engines[graph].file!r} (built for another TensorRT or GPU?)"
                )
            names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
            spec = self.specs[graph]
            if names != set(spec.input_names) | set(spec.output_names):
                raise EngineError(
                    f"engine for {graph} has tensors {sorted(names)}, the I/O spec expects {spec.input_names + spec.output_names}"
                )
            self._engines[graph] = engine
            self._contexts[graph] = engine.create_execution_context()
        if self.device.startswith("cuda"):
            # A non-default stream: TensorRT syncs extra on the default one.
            self._stream = torch.cuda.Stream()
            torch.cuda.set_stream(self._stream)
        self.ops = TorchOps(self.device, self._stream)
        self.active = True
        return self

    def deactivate(self) -> None:
        self._contexts.clear()
        self._engines.clear()
        if self._stream is not None:
            import torch

            torch.cuda.set_stream(torch.cuda.default_stream())
            self._stream = None
        self.active = False

    def _stream_handle(self) -> int:
        return int(self._stream.cuda_stream) if self._stream is not None else 0

    def _run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        _, torch = self._import()
        engine, ctx = self._engines[graph], self._contexts[graph]
        spec = self.specs[graph]
        keep = []  # every buffer handed to TensorRT stays referenced until the enqueue returns
        for name in spec.input_names:
            x = feeds[name]
            if not isinstance(x, torch.Tensor):
                x = torch.from_numpy(x)
            x = x.to(self.device).contiguous()
            if x.data_ptr() % ALIGNMENT:
                x = aligned_empty(torch, tuple(x.shape), x.dtype, self.device).copy_(x)
            if not ctx.set_input_shape(name, tuple(x.shape)):
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                raise EngineError(
                    f"{graph}: input {name!r} shape {tuple(x.shape)} is outside the engine profile [{tuple(lo)} .. {tuple(hi)}]"
                )
            ctx.set_tensor_address(name, x.data_ptr())
            keep.append(x)
        outputs = {}
        for name in spec.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{graph}: output {name!r} has unresolved shape {shape}")
            out = aligned_empty(torch, shape, torch.float32, self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not ctx.execute_async_v3(self._stream_handle()):
            raise EngineError(f"TensorRT execution of {graph} failed")
        self.calls += 1
        del keep
        return outputs
