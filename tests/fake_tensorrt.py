"""A small fake of the TensorRT Python API surface sed-trt uses, for CPU-only CI.

Builder side: records flags, profiles, timing-cache calls; "plans" are JSON naming the ONNX
file and the profile. Runtime side: an execution context that enforces what real TensorRT
enforces (input shapes within the profile, every tensor address set, 256-byte alignment)
and computes outputs by running the ONNX file in ONNX Runtime on host memory at the
given addresses, so the backend's binding logic is checked end to end on CPU.
"""

from __future__ import annotations

import ctypes
import json
import types

import numpy as np
import onnx

__version__ = "11.4.0.fake"
CALLS: list[tuple] = []


class Logger:
    WARNING = 2
    ERROR = 1

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 0  # TensorRT 11 numbering


class BuilderFlag:
    TF32 = 7  # TensorRT 11: no FP16 member


class MemoryPoolType:
    WORKSPACE = 0


class TensorIOMode:
    INPUT = 1
    OUTPUT = 2


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[str] = []
        self.onnx_path: str | None = None


class _ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def node_name(self) -> str:
        return "n/a"

    def node_operator(self) -> str:
        return "n/a"


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[_ParserError] = []

    def parse_from_file(self, path: str) -> bool:
        CALLS.append(("parse_from_file", path))
        try:
            model = onnx.load(path)
        except Exception as exc:
            self.errors.append(_ParserError(str(exc)))
            return False
        self.network.inputs = [i.name for i in model.graph.input]
        self.network.onnx_path = path
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), f"profile for {name} not ordered: {lo} {opt} {hi}"
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"fake-timing-cache"

    def serialize(self) -> bytes:
        return self.data + b"+"


class _Config:
    def __init__(self) -> None:
        self.profiles: list[_Profile] = []
        self.flags: set[int] = {BuilderFlag.TF32}  # as TensorRT: TF32 "Enabled by default"
        self.pools: dict[int, int] = {}
        self.cache: _TimingCache | None = None

    def set_flag(self, flag: int) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: int) -> None:
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool: int, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, p: _Profile) -> int:
        self.profiles.append(p)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        if cache.data.startswith(b"foreign") and not ignore_mismatch:
            return False  # a cache from another GPU or TensorRT version: not applied
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self.cache  # None when no cache was accepted


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        CALLS.append(("create_network", flags))
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        assert network.onnx_path, "build before parse"
        assert len(config.profiles) == 1
        missing = [n for n in network.inputs if n not in config.profiles[0].shapes]
        assert not missing, f"dynamic inputs without a profile: {missing}"
        CALLS.append(("build", network.onnx_path, config.profiles[0].shapes))
        CALLS.append(("build_flags", network.onnx_path, set(config.flags)))
        return json.dumps(
            {
                "onnx": network.onnx_path,
                "profile": {k: [list(s) for s in v] for k, v in config.profiles[0].shapes.items()},
            }
        ).encode()


_NP = {onnx.TensorProto.FLOAT: (np.float32, ctypes.c_float), onnx.TensorProto.INT64: (np.int64, ctypes.c_int64)}


class _Engine:
    def __init__(self, plan: dict) -> None:
        import onnxruntime as ort

        self.plan = plan
        self.model = onnx.load(plan["onnx"])
        self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.inputs = list(self.model.graph.input)
        self.outputs = list(self.model.graph.output)
        self.io = [*self.inputs, *self.outputs]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i].name

    def get_tensor_mode(self, name: str) -> int:
        return TensorIOMode.INPUT if name in {i.name for i in self.inputs} else TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple]:
        return [tuple(s) for s in self.plan["profile"][name]]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def _dim_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for vi in self.engine.inputs:
            for d, s in zip(vi.type.tensor_type.shape.dim, self.shapes[vi.name]):
                if d.dim_param:
                    sizes[d.dim_param] = s
        return sizes

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.shapes:
            return self.shapes[name]
        vi = next(o for o in self.engine.outputs if o.name == name)
        sizes = self._dim_sizes()
        return tuple(sizes.get(d.dim_param, -1) if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        assert ptr % 256 == 0, f"address of {name} not 256-byte aligned"
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        unset = [i.name for i in self.engine.inputs if i.name not in self.shapes]
        unbound = [t.name for t in self.engine.io if t.name not in self.addresses]
        assert not unset, f"execute without input shapes for {unset}"
        assert not unbound, f"execute without tensor addresses for {unbound}"
        feeds = {}
        for vi in self.engine.inputs:
            dtype, ctype = _NP[vi.type.tensor_type.elem_type]
            shape = self.shapes[vi.name]
            n = int(np.prod(shape))
            feeds[vi.name] = (
                np.ctypeslib.as_array((ctype * n).from_address(self.addresses[vi.name])).reshape(shape).copy()
            )
        outs = self.engine.session.run([o.name for o in self.engine.outputs], feeds)
        for vi, arr in zip(self.engine.outputs, outs):
            assert tuple(arr.shape) == self.get_tensor_shape(vi.name)
            ctypes.memmove(self.addresses[vi.name], np.ascontiguousarray(arr).ctypes.data, arr.nbytes)
        self.executions += 1
        CALLS.append(("execute", tuple(sorted(self.shapes.items()))))
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        try:
            return _Engine(json.loads(plan))
        except (ValueError, KeyError):
            return None


def as_module() -> types.ModuleType:
    """This fake as a module object, for injection as ``trt``."""
    import sys

    return sys.modules[__name__]
