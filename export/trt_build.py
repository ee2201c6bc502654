"""TensorRT engines from the exported graphs (TensorRT 10.12+ and 11.x Python API).

Written from ../shared/spec/tensorrt_facts.md: strongly typed networks
(``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``), ``parse_from_file`` with every
parser error reported, one optimisation profile per engine generated from the I/O spec
(T: min 1, opt the vocabulary size, max the exported maximum), a persistent timing cache,
``build_serialized_network`` checked for None. ``trt`` is injectable so CI tests the whole
builder against a fake of this API surface; nothing here has run on a real GPU yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from runtime.backends.tensorrt_backend import import_tensorrt
from runtime.errors import BackendUnavailableError, ExportError
from runtime.fsutil import atomic_write
from runtime.io_spec import ExportLimits, GraphSpec
from runtime.manifest import EngineEntry, Manifest
from runtime.progress import step

log = logging.getLogger("sed_trt")

TIMING_CACHE = "timing.cache"  # TensorRT's timing cache in an engine directory


def gpu_info() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0; raises without a GPU."""
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return torch.cuda.get_device_name(0), f"{major}.{minor}"
    raise BackendUnavailableError("no CUDA GPU is visible (torch.cuda.is_available() is False)")


def tensorrt_unavailable_reason() -> str | None:
    """Why engines cannot be built here, or None when TensorRT and a GPU are present."""
    try:
        import_tensorrt()
        gpu_info()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def profile_shapes(
    spec: GraphSpec, limits: ExportLimits
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max shape of every input, from the named dynamic axes of the spec."""
    out = {}
    for t in spec.inputs:
        ranges = {name: limits.range_of(name) for name in t.dynamic_axes().values()}
        out[t.name] = tuple(
            t.concrete({n: getattr(r, which) for n, r in ranges.items()}) for which in ("min", "opt", "max")
        )
    return out  # type: ignore[return-value]


def _parser_errors(parser: object) -> str:
    msgs = []
    for i in range(parser.num_errors):  # type: ignore[attr-defined]
        err = parser.get_error(i)  # type: ignore[attr-defined]
        msgs.append(f"{err.node_operator()} node {err.node_name()!r}: {err.desc()}")
    return "; ".join(msgs) or "no parser error recorded"


def build_engine(
    onnx_path: str | Path,
    spec: GraphSpec,
    limits: ExportLimits,
    *,
    precision: str = "fp32",
    timing_cache: bytes = b"",
    workspace_bytes: int | None = None,
    tf32: bool = False,
    trt: ModuleType | None = None,
) -> tuple[bytes, bytes]:
    """Build one serialized engine. Returns (plan bytes, updated timing-cache bytes).

    TensorRT enables TF32 by default, so an "fp32" engine is cleared of it unless ``tf32``
    (measured with the torch backend on an H100: TF32 convolutions flip 19 % of the parity
    labels). A timing cache TensorRT refuses (another GPU or version) is replaced by a new one.
    """
    trt = trt or import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if precision == "fp32":
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif precision == "fp16" and hasattr(trt.BuilderFlag, "FP16"):
        flags = 0  # TensorRT 10.x: weakly typed network + FP16 builder flag
    else:
        raise ExportError(
            "fp16 on TensorRT 11 needs fp16 types inside the ONNX (strong typing; e.g. ModelOpt AutoCast); "
            "this release builds fp16 only on TensorRT 10.x: use --precision fp32"
        )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(f"TensorRT cannot parse {Path(onnx_path).name}: {_parser_errors(parser)}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec, limits).items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"TensorRT rejected the optimisation profile of {spec.name}")
    if not config.set_timing_cache(config.create_timing_cache(timing_cache), False):
        log.warning(
            "the timing cache was made on another GPU or TensorRT version; building %s with a new one", spec.name
        )
        if not config.set_timing_cache(config.create_timing_cache(b""), False):
            raise ExportError("TensorRT refused an empty timing cache")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build {spec.name} (see the TensorRT log above)")
    final = config.get_timing_cache()
    return bytes(plan), bytes(final.serialize()) if final is not None else b""


def _bytes_writer(data: bytes) -> Callable[[str], int]:
    return lambda tmp: Path(tmp).write_bytes(data)


def build_engines(
    engine_dir: str | Path,
    *,
    precision: str = "fp32",
    workspace_bytes: int | None = None,
    tf32: bool = False,
    trt: ModuleType | None = None,
    gpu: tuple[str, str] | None = None,
    progress: bool = True,
) -> Manifest:
    """Build an engine for every graph of an engine directory and record them in its manifest."""
    trt = trt or import_tensorrt()
    gpu_name, capability = gpu or gpu_info()
    directory = Path(engine_dir)
    manifest = Manifest.load(directory)
    manifest.verify_files(directory, which=("graph",))  # never build an engine from a corrupt graph
    limits = manifest.limits  # decoder profiles span 1..class_chunk classes, optimised for a full chunk
    cache_path = directory / TIMING_CACHE
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    specs = manifest.specs
    for i, (name, onnx_file) in enumerate(manifest.graphs.items(), 1):
        step(f"[{i}/{len(manifest.graphs)}] building TensorRT engine {name} ({precision})", enabled=progress)
        plan, cache = build_engine(
            directory / onnx_file,
            specs[name],
            limits,
            precision=precision,
            timing_cache=cache,
            workspace_bytes=workspace_bytes,
            tf32=tf32,
            trt=trt,
        )
        plan_file = f"{name}.{precision}.plan"
        atomic_write(directory / plan_file, _bytes_writer(plan))
        shapes = profile_shapes(specs[name], limits)
        manifest.engines[name] = EngineEntry(
            file=plan_file,
            precision=f"{precision}+tf32" if tf32 else precision,
            tensorrt_version=str(trt.__version__),
            gpu_name=gpu_name,
            compute_capability=capability,
            profiles={inp: [list(s) for s in triple] for inp, triple in shapes.items()},
            onnx_file=onnx_file,
            sha256=hashlib.sha256(plan).hexdigest(),
        )
    atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(cache))
    manifest.save(directory)
    step(
        f"engines recorded in {directory / 'manifest.json'}: {json.dumps({k: v.file for k, v in manifest.engines.items()})}",
        enabled=progress,
    )
    return manifest
