"""TensorRT backend: one engine and execution context per graph over raw CUDA memory (no torch).

Needs only tensorrt, cuda-python and numpy. Activation checks every engine against the
manifest (TensorRT version, compute capability of the chosen GPU, tensor names, I/O modes,
dtypes and locations) and creates the contexts with user-managed device memory: the graphs
run one after another on one stream, so one block sized for the largest engine serves them
all. Per call it sets every input shape (the class chunk shrinks under CER) and every tensor
address, sizes outputs from ``get_tensor_shape`` and enqueues with ``execute_async_v3`` on
a non-default stream. Calls are serialised by a lock (the contexts and the shared block are
per backend), so one backend may serve several threads; for parallel execution open one
backend per thread or GPU. Written from ../shared/spec/tensorrt_facts.md and tested in CI
against a fake of the TensorRT API over host memory; the CUDA layer ran on an H200, real
TensorRT has not run yet.

``cuda_graphs`` (opt-in, ``--cuda-graphs``) replays CUDA graphs per shape bucket, as trtexec's
``--useCudaGraph`` does (TensorRT samples/common/sampleInference.cpp): a bucket (a graph and
its input shapes) gets its own execution context with those shapes fixed (sharing the one
device-memory block) and its own input and output buffers; its first call copies the inputs
in, enqueues once and waits (lazy initialisation stays out of the capture), then captures one
enqueue; later calls copy the inputs in, replay, and copy the outputs out (callers keep
outputs across replays). A capture TensorRT refuses (an engine with operations not permitted
under capture: the enqueue returns False) leaves that bucket on plain enqueues, with one
warning. Buckets beyond ``graph_memory_mb`` of buffers evict the least recently used. Tested
against the fake's capture rules; not yet run on real TensorRT.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from sed_trt.runtime.backends.base import EngineDirBackend
from sed_trt.runtime.backends.cuda_ops import ALIGNMENT, CudaMemory, CudaOps, DeviceArray, DeviceMemory
from sed_trt.runtime.backends.registry import CUDA_GRAPHS_OPTION, BackendSpec
from sed_trt.runtime.errors import BackendUnavailableError, ConfigError, DeviceError, EngineError, install_hint
from sed_trt.runtime.io_spec import GRAPH_NAMES

log = logging.getLogger("sed_trt")

SPEC = BackendSpec(
    name="tensorrt",
    cls="TensorRTBackend",
    summary="TensorRT engines built from the exported graphs, on an NVIDIA GPU (tensorrt + cuda-python, no torch)",
    loads="engine_dir",
    placement="gpu",
    precisions=("fp32", "fp16", "int8", "fp8"),  # the engines' own: sed-trt build-engines --precision
    options=(CUDA_GRAPHS_OPTION,),
    probe="probe",
)
GRAPH_MEMORY_MB = 4096  # the default bound on the buffers of captured buckets (least recently used evicted)
TRT_DTYPES = {"float32": "FLOAT", "int32": "INT32", "int64": "INT64"}  # spec dtype -> trt.DataType member
_LOGGERS: dict[int, Any] = {}  # one logger per TensorRT module: TensorRT keeps the first it is given


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` with a one-line error that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); on a machine with an NVIDIA GPU: {install_hint('trt')}"
        ) from None
    return trt


def probe() -> str:
    """TensorRT's version (raises when it is not installed)."""
    return str(import_tensorrt().__version__)


def trt_logger(trt: ModuleType) -> Any:
    """The process's one TensorRT logger (warnings and errors)."""
    key = id(trt)
    if key not in _LOGGERS:
        _LOGGERS[key] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[key]


def device_index(device: str | int) -> int:
    """``cuda``, ``cuda:N`` or N -> N."""
    if isinstance(device, int):
        return device
    name, _, index = str(device).partition(":")
    if name != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device {device!r}: the tensorrt backend runs on cuda or cuda:N")
    return int(index or 0)


class TensorRTBackend(EngineDirBackend):
    """Runs the TensorRT plans listed in an engine directory's manifest."""

    name = "tensorrt"
    device_resident = True
    verify_kinds = ("engine", "tokenizer")
    text_file_kind = "engine"

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        backbone: str | None = None,
        device: str | int = "cuda",
        trt_module: ModuleType | None = None,
        memory: DeviceMemory | None = None,
        cuda_graphs: bool = False,
        graph_memory_mb: int = GRAPH_MEMORY_MB,
    ) -> None:
        super().__init__(engine_dir, backbone=backbone)
        missing = [g for g in GRAPH_NAMES if g not in self.manifest.engines]
        if missing:
            raise EngineError(
                f"{str(self.engine_dir)!r} has no TensorRT engines for {missing}: build them on a GPU machine with "
                f"'sed-trt build-engines --engine-dir {self.engine_dir}' (or 'make engine')"
            )
        self.device_index = memory.device_index if memory is not None else device_index(device)
        self.device = f"cuda:{self.device_index}"
        self._trt = trt_module
        self._given_memory = memory
        self.memory: DeviceMemory | None = None
        self._engines: dict[str, Any] = {}
        self._contexts: dict[str, Any] = {}
        self._workspace: DeviceArray | None = None
        self._lock = threading.Lock()
        self.calls: int = 0
        self.cuda_graphs = cuda_graphs
        self.graph_memory_bytes = int(graph_memory_mb) << 20
        self._buckets: OrderedDict[tuple[Any, ...], _Bucket] = OrderedDict()  # least recently used first
        self._uncapturable: set[tuple[Any, ...]] = set()
        self.graph_stats = {"captures": 0, "replays": 0, "plain": 0, "failed_captures": 0, "evictions": 0}

    @classmethod
    def from_request(cls, request: Any) -> TensorRTBackend:
        device = request.device if str(request.device).startswith("cuda") else "cuda"  # cpu (the default): GPU 0
        if request.threads is not None:
            raise ConfigError("--threads does not apply to --backend tensorrt (it runs on the GPU)")
        cuda_graphs = bool(request.options.get("cuda_graphs", False))
        backend = cls(request.engine_dir, backbone=request.backbone, device=device, cuda_graphs=cuda_graphs)
        built = backend.engine_precision
        if built != request.precision:
            raise ConfigError(
                f"the engines in {str(request.engine_dir)!r} were built for {built}: use --precision {built} "
                f"(or rebuild them with 'sed-trt build-engines --precision {request.precision}')"
            )
        backend.check_compatible(pooling=request.pooling, image_size=request.image_size, weights=request.weights)
        return backend

    @property
    def engine_precision(self) -> str:
        """fp32, fp16, int8 or fp8: what the engines were built from (``build-engines --precision``).
        Graphs without such a version keep their fp32 engine: the text encoder in every set, and all
        but the image encoder in an int8 or fp8 set."""
        reduced = {e.precision.split("+")[0] for e in self.manifest.engines.values()} - {"fp32"}
        if len(reduced) > 1:
            raise EngineError(f"the engines in {str(self.engine_dir)!r} mix precisions {sorted(reduced)}: rebuild them")
        return reduced.pop() if reduced else "fp32"

    @property
    def label(self) -> str:
        return SPEC.label(self.engine_precision)

    def placement(self) -> dict[str, Any]:
        name = self.memory.properties()[0] if self.memory is not None else self.device
        return {"device": name, "threads": None}

    def _check_entry(self, graph: str, trt: ModuleType, gpu: tuple[str, str]) -> None:
        entry = self.manifest.engines[graph]
        if entry.tensorrt_version != str(trt.__version__):
            raise EngineError(
                f"engine {entry.file!r} was built with TensorRT {entry.tensorrt_version}, this is {trt.__version__}: rebuild it"
            )
        if entry.compute_capability != gpu[1]:
            raise EngineError(
                f"engine {entry.file!r} was built for compute capability {entry.compute_capability} ({entry.gpu_name}), "
                f"GPU {self.device_index} is {gpu[1]} ({gpu[0]}): rebuild it"
            )

    def _check_io(self, graph: str, engine: Any, trt: ModuleType) -> None:
        """Names, modes, dtypes and locations of the engine's tensors against the I/O spec."""
        spec = self.specs[graph]
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != set(spec.input_names) | set(spec.output_names):
            raise EngineError(
                f"engine for {graph} has tensors {sorted(names)}, the I/O spec expects {spec.input_names + spec.output_names}"
            )
        for mode, tensors in ((trt.TensorIOMode.INPUT, spec.inputs), (trt.TensorIOMode.OUTPUT, spec.outputs)):
            for t in tensors:
                if engine.get_tensor_mode(t.name) != mode:
                    raise EngineError(f"engine for {graph}: {t.name!r} is not an {mode.name.lower()}")
                want = getattr(trt.DataType, TRT_DTYPES[t.dtype])
                got = engine.get_tensor_dtype(t.name)
                if got != want:
                    raise EngineError(
                        f"engine for {graph}: {t.name!r} is {getattr(got, 'name', got)}, the runtime binds {t.dtype} "
                        "(fp16 engines keep fp32 I/O: rebuild from this release's graphs)"
                    )
                if engine.get_tensor_location(t.name) != trt.TensorLocation.DEVICE:
                    raise EngineError(f"engine for {graph}: {t.name!r} is not in device memory")

    def activate(self) -> TensorRTBackend:
        if self._trt is None:
            self._trt = import_tensorrt()
        trt = self._trt
        self.verify()
        memory = self._given_memory or CudaMemory(self.device_index)
        engines: dict[str, Any] = {}
        contexts: dict[str, Any] = {}
        try:
            return self._activate(trt, memory, engines, contexts)
        except BaseException as exc:
            # Destroyed now and in TensorRT's order (contexts, then engines, then their memory), not
            # whenever the garbage collector reaches the traceback's frames.
            traceback.clear_frames(exc.__traceback__)  # _activate's locals: the last engine and context
            contexts.clear()
            engines.clear()
            if memory is not self._given_memory and memory is not self.memory:
                memory.close()
            raise

    def _activate(
        self, trt: ModuleType, memory: Any, engines: dict[str, Any], contexts: dict[str, Any]
    ) -> TensorRTBackend:
        memory.bind()  # TensorRT puts engines on the thread's current device
        gpu = memory.properties()
        for graph in GRAPH_NAMES:
            self._check_entry(graph, trt, gpu)
        runtime = trt.Runtime(trt_logger(trt))
        if runtime is None:
            raise EngineError("TensorRT could not create a runtime (see the TensorRT log above)")
        for graph in GRAPH_NAMES:
            plan = self.manifest.read_verified(self.engine_dir, self.manifest.engines[graph].file)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(
                    f"TensorRT could not deserialize {self.manifest.engines[graph].file!r} (built for another TensorRT or GPU?)"
                )
            self._check_io(graph, engine, trt)
            engines[graph] = engine
        # One device-memory block for every context: the graphs never run at the same time.
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        size = max(_device_memory_size(e) for e in engines.values()) if strategy is not None else 0
        workspace = DeviceArray.empty(memory, (max(size, 1),), "uint8") if strategy is not None else None
        for graph, engine in engines.items():
            if strategy is not None:
                ctx = engine.create_execution_context(strategy.USER_MANAGED)
            else:
                ctx = engine.create_execution_context()
            if ctx is None:
                raise EngineError(f"TensorRT could not create an execution context for {graph} (out of device memory?)")
            if workspace is not None:
                ctx.set_device_memory(workspace.ptr, size)
            contexts[graph] = ctx
        self.memory, self._engines, self._contexts, self._workspace = memory, engines, contexts, workspace
        self.ops = CudaOps(memory)
        self.active = True
        return self

    def deactivate(self) -> None:
        with self._lock:
            for bucket in self._buckets.values():
                self._release(bucket)
            self._buckets.clear()
            self._uncapturable.clear()
        self._contexts.clear()
        self._engines.clear()
        self._workspace = None
        if self.memory is not None and self._given_memory is None:
            self.memory.close()
        self.memory = None
        self.active = False

    def _run(self, graph: str, feeds: dict[str, Any]) -> dict[str, DeviceArray]:
        assert isinstance(self.ops, CudaOps)
        if self.cuda_graphs:
            inputs = {name: self.ops.device_array(feeds[name]) for name in self.specs[graph].input_names}
            key = (graph, *((name, x.shape) for name, x in inputs.items()))
            with self._lock:
                self.ops.memory.bind()
                if key not in self._uncapturable:
                    return self._run_bucket(graph, key, inputs)
        return self._run_plain(graph, feeds)

    def _run_plain(self, graph: str, feeds: dict[str, Any]) -> dict[str, DeviceArray]:
        assert isinstance(self.ops, CudaOps)
        ops = self.ops
        with self._lock:
            ops.memory.bind()
            if self.cuda_graphs:
                self.graph_stats["plain"] += 1
            engine, ctx = self._engines[graph], self._contexts[graph]
            spec = self.specs[graph]
            bound = []  # inputs stay referenced until enqueued (frees are stream-ordered after that)
            for name in spec.input_names:
                x = ops.device_array(feeds[name])
                if x.ptr % ALIGNMENT:  # a chunk view at an unaligned offset: TensorRT needs 256 bytes
                    aligned = DeviceArray.empty(ops.memory, x.shape, x.dtype)
                    ops.memory.copy2d(aligned.ptr, x.nbytes, x.ptr, x.nbytes, x.nbytes, 1)
                    x = aligned
                if not ctx.set_input_shape(name, x.shape):
                    lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                    raise EngineError(
                        f"{graph}: input {name!r} shape {x.shape} is outside the engine profile [{tuple(lo)} .. {tuple(hi)}]"
                    )
                _set_address(ctx, graph, name, x.ptr)
                bound.append(x)
            outputs = {}
            spec_dtypes = {t.name: t.dtype for t in spec.outputs}
            for name in spec.output_names:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineError(f"{graph}: output {name!r} has unresolved shape {shape}")
                out = DeviceArray.empty(ops.memory, shape, spec_dtypes[name])
                _set_address(ctx, graph, name, out.ptr)
                outputs[name] = out
            if not ctx.execute_async_v3(ops.memory.stream_handle):
                raise EngineError(f"TensorRT execution of {graph} failed (see the TensorRT log above)")
            self.calls += 1
            del bound
        return outputs

    @property
    def _memory(self) -> DeviceMemory:
        if self.memory is None:
            raise EngineError("the tensorrt backend is not active")
        return self.memory

    def _run_bucket(self, graph: str, key: tuple[Any, ...], inputs: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        """One call through the bucket's CUDA graph (captured on its first call). Holds the lock."""
        memory = self._memory
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._new_bucket(graph, inputs)
            self._copy_in(bucket, inputs)
            if not bucket.context.execute_async_v3(memory.stream_handle):  # outside the capture: lazy set-up
                raise EngineError(f"TensorRT execution of {graph} failed (see the TensorRT log above)")
            memory.synchronize()
            memory.begin_capture()
            try:
                captured = bucket.context.execute_async_v3(memory.stream_handle)
            except Exception:
                memory.abort_capture()
                raise
            if captured:
                try:
                    bucket.graph = memory.end_capture()
                except DeviceError as exc:
                    memory.abort_capture()
                    captured, why = False, str(exc)
            else:
                memory.abort_capture()
                why = "TensorRT refused to enqueue under stream capture"
            self.calls += 1
            outputs = self._copy_out(bucket)
            if not captured:  # trtexec's fallback: plain enqueues for this shape from now on
                self.graph_stats["failed_captures"] += 1
                self._uncapturable.add(key)
                if self.graph_stats["failed_captures"] == 1:
                    log.warning("CUDA graphs: %s for %s %s; that shape runs without a graph", why, graph, key[1:])
                self._release(bucket)
                return outputs
            self.graph_stats["captures"] += 1
            self._buckets[key] = bucket
            self._evict()
            return outputs
        self._buckets.move_to_end(key)
        self._copy_in(bucket, inputs)
        memory.launch(bucket.graph)
        self.graph_stats["replays"] += 1
        self.calls += 1
        return self._copy_out(bucket)

    def _new_bucket(self, graph: str, inputs: dict[str, DeviceArray]) -> _Bucket:
        """A context of ``graph``'s engine with ``inputs``' shapes fixed and its own I/O buffers."""
        trt, engine, spec = self._trt, self._engines[graph], self.specs[graph]
        assert trt is not None and self.memory is not None
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        ctx = (
            engine.create_execution_context(strategy.USER_MANAGED)
            if strategy is not None
            else engine.create_execution_context()
        )
        if ctx is None:
            raise EngineError(f"TensorRT could not create an execution context for {graph} (out of device memory?)")
        if self._workspace is not None:
            ctx.set_device_memory(self._workspace.ptr, self._workspace.nbytes)
        bucket = _Bucket(ctx)
        for name, x in inputs.items():
            if not ctx.set_input_shape(name, x.shape):
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                raise EngineError(
                    f"{graph}: input {name!r} shape {x.shape} is outside the engine profile [{tuple(lo)} .. {tuple(hi)}]"
                )
            bucket.inputs[name] = DeviceArray.empty(self.memory, x.shape, x.dtype)
            _set_address(ctx, graph, name, bucket.inputs[name].ptr)
        for t in spec.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{graph}: output {t.name!r} has unresolved shape {shape}")
            bucket.outputs[t.name] = DeviceArray.empty(self.memory, shape, t.dtype)
            _set_address(ctx, graph, t.name, bucket.outputs[t.name].ptr)
        return bucket

    def _copy_in(self, bucket: _Bucket, inputs: dict[str, DeviceArray]) -> None:
        for name, x in inputs.items():
            dst = bucket.inputs[name]
            self._memory.copy2d(dst.ptr, dst.nbytes, x.ptr, x.nbytes, x.nbytes, 1)

    def _copy_out(self, bucket: _Bucket) -> dict[str, DeviceArray]:
        """Fresh copies of the bucket's outputs: the next replay overwrites its buffers."""
        out = {}
        for name, src in bucket.outputs.items():
            dst = DeviceArray.empty(self._memory, src.shape, src.dtype)
            self._memory.copy2d(dst.ptr, dst.nbytes, src.ptr, src.nbytes, src.nbytes, 1)
            out[name] = dst
        return out

    def _evict(self) -> None:
        """Release least recently used buckets while their buffers exceed the bound (keeps the newest)."""
        while len(self._buckets) > 1 and sum(b.nbytes for b in self._buckets.values()) > self.graph_memory_bytes:
            _, old = self._buckets.popitem(last=False)
            self._release(old)
            self.graph_stats["evictions"] += 1

    def _release(self, bucket: _Bucket) -> None:
        if bucket.graph is not None and self.memory is not None:
            self.memory.destroy_graph(bucket.graph)
        bucket.graph = None
        bucket.inputs.clear()
        bucket.outputs.clear()


@dataclass
class _Bucket:
    """One captured shape of one graph: its context, fixed I/O buffers and instantiated CUDA graph."""

    context: Any
    inputs: dict[str, DeviceArray] = field(default_factory=dict)
    outputs: dict[str, DeviceArray] = field(default_factory=dict)
    graph: Any = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.inputs.values(), *self.outputs.values()))


def _device_memory_size(engine: Any) -> int:
    """Scratch memory a context of ``engine`` needs at its largest profile shapes."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


def _set_address(ctx: Any, graph: str, name: str, ptr: int) -> None:
    if not ctx.set_tensor_address(name, ptr):
        raise EngineError(f"{graph}: TensorRT refused the address of {name!r}")
