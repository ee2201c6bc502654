"""A strict fake of the TensorRT Python API surface that Polygraphy and sed-trt use, for CPU-only CI.

``make(version)`` gives a module object for TensorRT 10.x or 11.x, with that version's enums
(TensorRT 11 has no precision builder flags, no EXPLICIT_BATCH and no
``device_memory_size``; the NetworkDefinitionCreationFlag values are renumbered; BuilderFlag
values follow the 10.16 NvInfer.h where we could read them). What real TensorRT refuses,
the fake refuses the same way (a False or None return, never an exception):
``set_timing_cache`` of a cache from another version or GPU, ``add_optimization_profile``
of an unordered profile, ``set_input_shape`` outside the profile, ``set_tensor_address``
of an unaligned pointer, ``deserialize_cuda_engine`` of another version's plan, a build
whose TopK may take K above 3840 (``ITopKLayer``, NvInfer.h: "Values larger than 3840 will
result in a runtime error"; K bounded by the graph, else by the profile's largest sorted
axis; the errors are kept in ``ERRORS``), a build of fp8 Q/DQ layers on a GPU below compute
capability 8.9 (``GPU["capability"]``; TensorRT 10.3 on an RTX A6000: "Error Code 9: API Usage
Error (Networks with FP8 Q/DQ layers require hardware with FP8 support.)", NVIDIA
Model-Optimizer issue 70). It is
stricter where sed-trt promised more: execution on the default stream, without device
memory for a user-managed context or with a tensor unbound fails.

Engines compute by running their ONNX file in ONNX Runtime; inputs are read from and
outputs written to the bound addresses through a :class:`~sed_trt.runtime.backends.cuda_ops.DeviceMemory`
(``tests/fake_cuda.HostMemory`` on CPU, the real ``CudaMemory`` on a GPU), so every copy
and pointer the backend computes is exercised. Knobs for failure tests: ``FAIL``
(``"context"``, ``"build"``, ``"capture"``) and the module's ``CALLS`` log.

Execution follows TensorRT's rules for streams and CUDA graphs. An engine lives on the device
current when it was deserialized; an enqueue on a stream of another device, or from a thread
whose current device is another, returns False (CUDA: a stream is usable only on its device).
Under stream capture (``tests/fake_cuda.HostMemory``), an enqueue is recorded for replay with
the shapes and addresses it had; it returns False when the context's input shapes or device
memory changed since its last plain enqueue (the first enqueue after a change does lazy set-up
that may not be captured: trtexec enqueues once before capturing, "Avoid capturing
initialization calls", TensorRT samples/common/sampleInference.cpp) and, with
``FAIL = {"capture"}``, always (an engine with "operations that are not permitted under CUDA
graph capture mode", where "the enqueue call may return false"). Over real device memory the
fake computes on the host, so it cannot be captured: it refuses every capture there.
"""

from __future__ import annotations

import enum
import json
import types
from typing import Any

import numpy as np
import onnx

from sed_trt.runtime.backends.cuda_ops import DeviceMemory
from tests import fake_cuda

ONNX_TO_DTYPE = {
    onnx.TensorProto.FLOAT: "FLOAT",
    onnx.TensorProto.FLOAT16: "HALF",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
}
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}

V10_BUILDER_FLAGS = {  # TensorRT 10.16 NvInfer.h
    "FP16": 0,
    "INT8": 1,
    "DEBUG": 2,
    "GPU_FALLBACK": 3,
    "REFIT": 4,
    "DISABLE_TIMING_CACHE": 5,
    "TF32": 6,
    "SPARSE_WEIGHTS": 7,
    "SAFETY_SCOPE": 8,
    "OBEY_PRECISION_CONSTRAINTS": 9,
    "PREFER_PRECISION_CONSTRAINTS": 10,
    "DIRECT_IO": 11,
    "REJECT_EMPTY_ALGORITHMS": 12,
    "VERSION_COMPATIBLE": 13,
    "EXCLUDE_LEAN_RUNTIME": 14,
    "FP8": 15,
    "ERROR_ON_TIMING_CACHE_MISS": 16,
    "BF16": 17,
    "DISABLE_COMPILATION_CACHE": 18,
    "STRIP_PLAN": 19,
}
V11_REMOVED = {"FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}


def _topk_bounds(model: Any) -> list[tuple[str, int | None, tuple[str, int]]]:
    """Each TopK of the graph: its name, K's constant upper bound (None: none in the graph) and
    (the graph input it sorts, the axis), to bound K by the profile where the graph does not."""
    from sed_trt.export.check import _upper_bound

    out = []
    inputs = {vi.name for vi in model.graph.input}
    for node in model.graph.node:
        if node.op_type != "TopK":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        data = node.input[0] if node.input[0] in inputs else ""
        out.append((node.name or "TopK", _upper_bound(node.input[1], model.graph), (data, axis)))
    return out


def _nonzero_zero_points(model: Any) -> list[str]:
    """The Q/DQ nodes whose zero point is not 0 (TensorRT's parser refuses them: symmetric int8 only)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        and len(n.input) > 2
        and n.input[2] in inits
        and np.any(inits[n.input[2]] != 0)
    ]


def _has_fp8(model: Any) -> bool:
    """Whether a Q/DQ node's zero point is FLOAT8E4M3FN (ONNX QuantizeLinear 19: the output's type)."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear")
        and len(n.input) > 2
        and inits.get(n.input[2]) == onnx.TensorProto.FLOAT8E4M3FN
        for n in model.graph.node
    )


def make(version: str = "11.4.0.106") -> types.ModuleType:
    """A fake ``tensorrt`` module of the given version."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.CALLS = []  # (event, details) in call order
    trt.FAIL = set()  # "build", "context": make that step return None; "capture": enqueues under capture fail
    trt.MEMORY = None  # the DeviceMemory engines read and write (set by use_memory)
    calls: list[tuple] = trt.CALLS
    logger_errors: list[str] = []  # what a build that returned None would have logged
    trt.ERRORS = logger_errors

    flags = dict(V10_BUILDER_FLAGS)
    if major >= 11:
        flags = {k: v for k, v in flags.items() if k not in V11_REMOVED}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag",
        {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        if major < 11
        else {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1},
    )
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "TACTIC_SHARED_MEMORY": 5})
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.TensorLocation = enum.IntEnum("TensorLocation", {"DEVICE": 0, "HOST": 1})
    trt.DataType = enum.IntEnum(
        "DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "BF16": 7, "INT64": 8}
    )
    trt.ExecutionContextAllocationStrategy = enum.IntEnum(
        "ExecutionContextAllocationStrategy", {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2}
    )
    trt.OnnxParserFlag = enum.IntEnum("OnnxParserFlag", {"NATIVE_INSTANCENORM": 0})

    class ILogger:
        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity: int = 2) -> None:
            super().__init__()
            self.severity = severity
            calls.append(("logger", severity))

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    class _Input:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype, self.is_shape_tensor = name, shape, dtype, False

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[_Input] = []
            self.onnx_path: str | None = None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> _Input:
            return self.inputs[i]

        def get_flag(self, flag: Any) -> bool:
            return bool(self.flags & (1 << int(flag)))

        def __iter__(self):
            return iter(())  # no layers to report precisions of

    class _ParserError:
        def __init__(self, desc: str) -> None:
            self._desc = desc

        def desc(self) -> str:
            return self._desc

        def node_name(self) -> str:
            return ""

        def node_operator(self) -> str:
            return ""

        def __str__(self) -> str:
            return self._desc

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[_ParserError] = []
            self.flags = 0

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            try:
                model = onnx.load(path)
            except Exception as exc:
                self.errors.append(_ParserError(f"cannot read {path}: {exc}"))
                return False
            for vi in model.graph.input:
                tt = vi.type.tensor_type
                shape = tuple(d.dim_value if not d.dim_param else -1 for d in tt.shape.dim)
                self.network.inputs.append(_Input(vi.name, shape, getattr(trt.DataType, ONNX_TO_DTYPE[tt.elem_type])))
            nonzero = _nonzero_zero_points(model)
            if nonzero:  # onnx-tensorrt operators.md, QuantizeLinear/DequantizeLinear: "zero_point must be 0"
                self.errors.append(_ParserError(f"{nonzero[0]}: Assertion failed: zero point must be 0"))
                return False
            self.network.onnx_path = path
            self.network.topk = _topk_bounds(model)
            self.network.fp8 = _has_fp8(model)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> _ParserError:
            return self.errors[i]

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}
            self.valid = True

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            lo, opt, hi = tuple(lo), tuple(opt), tuple(hi)
            if not (len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi))):
                self.valid = False  # TensorRT logs an error; add_optimization_profile then returns -1
            self.shapes[name] = (lo, opt, hi)

    def cache_blob(gpu: str, entries: int) -> bytes:
        return json.dumps({"trt": version, "gpu": gpu, "entries": entries}).encode()

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            try:
                self.d = json.loads(data) if data else {"trt": version, "gpu": "fake", "entries": 0}
            except ValueError:
                self.d = {"trt": "garbage", "gpu": "", "entries": 0}

        def serialize(self) -> bytes:
            return cache_blob(self.d["gpu"], self.d["entries"])

        def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
            self.d["entries"] += other.d["entries"]
            return True

    class BuilderConfig:
        def __init__(self) -> None:
            self.profiles: list[OptimizationProfile] = []
            self.flags: set[int] = {int(trt.BuilderFlag.TF32)}  # TensorRT: TF32 "Enabled by default"
            self.pools: dict[int, int] = {}
            self.cache: TimingCache | None = None
            self.DLA_core = -1
            self.default_device_type = trt.DeviceType.GPU
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_flag(self, flag: Any) -> None:
            self.flags.add(int(flag))

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(int(flag))

        def get_flag(self, flag: Any) -> bool:
            return int(flag) in self.flags

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pools[int(pool)] = size

        def get_memory_pool_limit(self, pool: Any) -> int:
            return self.pools.get(int(pool), 1 << 40)

        def add_optimization_profile(self, p: OptimizationProfile) -> int:
            if not p.valid:
                return -1
            self.profiles.append(p)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.d["trt"] != version or (cache.d["gpu"] not in ("fake", GPU["name"]) and not ignore_mismatch):
                return False  # another TensorRT version or GPU: not applied
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache  # None when no cache was accepted

    GPU = {"name": "Fake GPU", "capability": (9, 0)}  # an H100's
    trt.GPU = GPU

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            if "build" in trt.FAIL or not network.onnx_path or len(config.profiles) != 1:
                return None
            profile = config.profiles[0].shapes
            for inp in network.inputs:
                if inp.name not in profile:
                    return None  # a dynamic input without a profile
                lo, _, hi = profile[inp.name]
                if len(lo) != len(inp.shape) or any(
                    s not in (-1, a) or (s != -1 and a != b) for s, a, b in zip(inp.shape, lo, hi)
                ):
                    return None  # the profile contradicts a static dimension
            # ITopKLayer (NvInfer.h): "Values larger than 3840 will result in a runtime error" (K).
            # A K with no constant bound is as large as the sorted axis: the profile's largest T.
            for node_name, bound, (data_input, axis) in getattr(network, "topk", []):
                if bound is None and data_input in profile:
                    bound = profile[data_input][2][axis]
                if bound is None or bound > 3840:
                    logger_errors.append(f"{node_name}: TopK K up to {bound}, above TensorRT's 3840")
                    return None
            if getattr(network, "fp8", False) and tuple(GPU["capability"]) < (8, 9):
                logger_errors.append(
                    "IBuilder::buildSerializedNetwork: Error Code 9: API Usage Error "
                    "(Networks with FP8 Q/DQ layers require hardware with FP8 support.)"
                )
                return None
            if config.cache is not None:
                config.cache.d["gpu"], config.cache.d["entries"] = GPU["name"], config.cache.d["entries"] + 1
            strongly_typed = major >= 11 or network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            calls.append(("build", network.onnx_path, dict(profile)))
            calls.append(("build_flags", network.onnx_path, {trt.BuilderFlag(f).name for f in config.flags}))
            return json.dumps(
                {
                    "trt": version,
                    "onnx": network.onnx_path,
                    "strongly_typed": strongly_typed,
                    "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                }
            ).encode()

    class Engine:
        def __init__(self, plan: dict) -> None:
            import onnxruntime as ort

            self.plan = plan
            self.device = fake_cuda.current_device()  # where TensorRT put the engine
            model = onnx.load(plan["onnx"])
            options = ort.SessionOptions()
            if _has_fp8(model):  # ONNX Runtime's optimisations retype float8 tensors opset 20 cannot hold
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.session = ort.InferenceSession(plan["onnx"], options, providers=["CPUExecutionProvider"])
            self.inputs = list(model.graph.input)
            self.outputs = list(model.graph.output)
            self.io = [*self.inputs, *self.outputs]
            self.dtypes = {vi.name: ONNX_TO_DTYPE[vi.type.tensor_type.elem_type] for vi in self.io}
            self.dtypes.update(plan.get("dtype_override", {}))

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        @property
        def num_optimization_profiles(self) -> int:
            return 1

        @property
        def device_memory_size_v2(self) -> int:
            return 4096 + 256 * len(self.io)  # scratch for the largest profile

        def get_tensor_name(self, i: int) -> str:
            return self.io[i].name

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name in {i.name for i in self.inputs} else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(trt.DataType, self.dtypes[name])

        def get_tensor_location(self, name: str) -> Any:
            return trt.TensorLocation.DEVICE

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple]:
            return [tuple(s) for s in self.plan["profile"][name]]

        def create_execution_context(self, strategy: Any = None) -> Context | None:
            if "context" in trt.FAIL:
                return None  # TensorRT returns None (out of device memory)
            calls.append(
                ("context", None if strategy is None else trt.ExecutionContextAllocationStrategy(strategy).name)
            )
            return Context(self, strategy)

    if major < 11:
        Engine.device_memory_size = Engine.device_memory_size_v2  # removed in 11

    class Context:
        def __init__(self, engine: Engine, strategy: Any) -> None:
            self.engine = engine
            self.user_managed = strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED
            self.device_memory: tuple[int, int] | None = None
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.executions = 0
            self.dirty = True  # shapes or device memory changed since the last plain enqueue

        def set_device_memory(self, ptr: int, size: int) -> None:
            if size < self.engine.device_memory_size_v2 or ptr % 256:
                raise RuntimeError("device memory too small or unaligned")
            self.device_memory = (ptr, size)
            self.dirty = True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            shape = tuple(shape)
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            if self.shapes.get(name) != shape:
                self.dirty = True
            self.shapes[name] = shape
            return True

        def _dim_sizes(self) -> dict[str, int]:
            sizes: dict[str, int] = {}
            for vi in self.engine.inputs:
                for d, s in zip(vi.type.tensor_type.shape.dim, self.shapes.get(vi.name, ())):
                    if d.dim_param:
                        sizes[d.dim_param] = s
            return sizes

        def get_tensor_shape(self, name: str) -> tuple:
            if name in self.shapes:
                return self.shapes[name]
            vi = next(o for o in self.engine.io if o.name == name)
            sizes = self._dim_sizes()
            return tuple(
                sizes.get(d.dim_param, -1) if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim
            )

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if ptr % 256:
                return False  # "The pointer must have at least 256-byte alignment"
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            unset = [i.name for i in self.engine.inputs if i.name not in self.shapes]
            unbound = [t.name for t in self.engine.io if t.name not in self.addresses]
            memory: DeviceMemory = trt.MEMORY
            host = isinstance(memory, fake_cuda.HostMemory)
            capturing = bool(getattr(memory, "capturing", False))
            wrong_device = host and {fake_cuda.stream_device(stream), fake_cuda.current_device()} != {
                self.engine.device
            }
            problem = (
                "default stream"
                if not stream
                else f"no shapes for {unset}"
                if unset
                else f"no addresses for {unbound}"
                if unbound
                else "no device memory for a user-managed context"
                if self.user_managed and self.device_memory is None
                else f"a stream or current device other than the engine's device {self.engine.device}"
                if wrong_device
                else "operations not permitted under CUDA graph capture"
                if capturing and ("capture" in trt.FAIL or not host)
                else "the first enqueue after a shape or memory change inside a capture"
                if capturing and self.dirty
                else None
            )
            if problem:
                calls.append(("execute_failed", problem))
                return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            if capturing:
                calls.append(("capture", tuple(sorted(shapes.items())), stream))
                memory.record(lambda: self._compute(memory, shapes, addresses, "replay", stream))  # type: ignore[attr-defined]
                return True
            self._compute(memory, shapes, addresses, "execute", stream)
            self.dirty = False
            return True

        def _compute(self, memory: DeviceMemory, shapes: dict, addresses: dict, event: str, stream: int) -> None:
            feeds = {}
            for vi in self.engine.inputs:
                dtype = NUMPY[self.engine.dtypes[vi.name]]
                feeds[vi.name] = np.empty(shapes[vi.name], dtype=dtype)
                # the engine's own reads and writes happen on the device: not host transfers
                getattr(memory, "engine_read", memory.download)(feeds[vi.name], addresses[vi.name])
            outs = self.engine.session.run([o.name for o in self.engine.outputs], feeds)
            for vi, arr in zip(self.engine.outputs, outs):
                getattr(memory, "engine_write", memory.upload)(
                    addresses[vi.name], np.ascontiguousarray(arr, dtype=NUMPY[self.engine.dtypes[vi.name]])
                )
            memory.synchronize()
            self.executions += 1
            calls.append((event, tuple(sorted(shapes.items())), stream))

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            try:
                d = json.loads(plan)
            except ValueError:
                return None
            if d.get("trt") != version:
                return None  # a plan of another TensorRT version
            return Engine(d)

    for cls in (Builder, Runtime, OnnxParser):
        setattr(trt, cls.__name__, cls)
    return trt


def use_memory(trt: types.ModuleType, memory: DeviceMemory) -> None:
    """Let the fake's engines read and write bound addresses through ``memory``."""
    trt.MEMORY = memory


def install(trt: types.ModuleType, monkeypatch: Any) -> None:
    """Make ``import tensorrt`` (ours and Polygraphy's lazy imports) give the fake ``trt``."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    reset_polygraphy()


def reset_polygraphy() -> None:
    """Forget the tensorrt module Polygraphy's lazy imports cached (a fake from an earlier test)."""
    import sys

    for name, module in list(sys.modules.items()):
        lazy = getattr(module, "trt", None) if name.startswith("polygraphy") else None
        if lazy is not None and type(lazy).__name__ == "LazyModule":
            object.__setattr__(lazy, "module", None)
