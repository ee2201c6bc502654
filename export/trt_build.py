"""TensorRT engines from the exported graphs, built with Polygraphy's loaders (TensorRT 10.12+ and 11.x).

``NetworkFromOnnxPath(strongly_typed=True)`` parses with ``parse_from_file``;
``CreateConfig`` holds the optimisation profile generated from the I/O spec (N: 1 ..
``class_chunk``, tuned for a full chunk), TF32 off unless asked (TensorRT turns it on by
default, Polygraphy clears it), the workspace limit; a post-processing step of ours applies
the timing cache and checks what Polygraphy does not: a cache TensorRT refuses (another GPU
or TensorRT version) is replaced by an empty one with a warning, a profile TensorRT rejects
is an error, and a build that leaves no timing cache keeps the old file. The timing cache
file is keyed by TensorRT version and compute capability (``timing-<version>-sm<cc>.cache``).
Precision lives in the ONNX (strong typing, the only kind on TensorRT 11, which has no fp16
builder flag): fp32 engines come from the exported graphs, fp16 engines from the
mixed-precision graphs of ``sed-trt export --fp16`` (:mod:`export.fp16`), int8 and fp8 engines
from the Q/DQ graphs of ``--int8`` / ``--fp8`` (:mod:`export.qdq`; fp8 needs compute capability
8.9 or later, which is checked before TensorRT is asked). Every Polygraphy
failure becomes one :class:`~runtime.errors.ExportError` line. Tested in CI against a fake
of the TensorRT API; it has not run on a real GPU yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sed_trt.runtime.backends.tensorrt_backend import device_index, import_tensorrt
from sed_trt.runtime.errors import BackendUnavailableError, ExportError, SedTrtError, install_hint
from sed_trt.runtime.fsutil import atomic_write
from sed_trt.runtime.io_spec import ExportLimits, GraphSpec
from sed_trt.runtime.manifest import EngineEntry, Manifest
from sed_trt.runtime.progress import step

log = logging.getLogger("sed_trt")


FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9), Hopper (9.0) and later
TIMING_CACHE_GLOB = "timing-*.cache"  # the timing caches of an engine directory, one per TensorRT version and GPU


def timing_cache_name(trt_version: str, capability: str) -> str:
    """Timing-cache file of an engine directory: valid for one TensorRT version and GPU architecture."""
    return f"timing-{trt_version}-sm{capability.replace('.', '')}.cache"


def _capability(text: str) -> tuple[int, ...]:
    """'8.9' -> (8, 9) (an unreadable one compares lowest)."""
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return (0,)


def gpu_info(device: str | int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device, through cuda-python."""
    from sed_trt.runtime.backends.cuda_ops import CudaMemory

    memory = CudaMemory(device_index(device))
    try:
        return memory.properties()
    finally:
        memory.close()


def tensorrt_unavailable_reason() -> str | None:
    """Why engines cannot be built here, or None when TensorRT, cuda-python and a GPU are present."""
    try:
        import_tensorrt()
        import_polygraphy()
        gpu_info()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def import_polygraphy() -> Any:
    """Polygraphy's TensorRT loaders, with a one-line error that says what to install."""
    try:
        from polygraphy.backend import trt as poly_trt
    except ImportError:
        raise BackendUnavailableError(f"building engines needs Polygraphy: {install_hint('trt')}") from None
    return poly_trt


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


def build_engine(
    onnx_path: str | Path,
    spec: GraphSpec,
    limits: ExportLimits,
    *,
    timing_cache: bytes = b"",
    workspace_bytes: int | None = None,
    tf32: bool = False,
    trt: ModuleType | None = None,
) -> tuple[bytes, bytes | None]:
    """Build one serialized engine. Returns (plan bytes, updated timing-cache bytes or None).

    The network is strongly typed: the engine computes in the types of the ONNX (fp32, or
    the fp16/fp32 mix of an fp16 export). TF32 stays off unless ``tf32`` (measured with the
    torch backend on an H100: TF32 convolutions flip 19 % of the parity labels).
    """
    trt = trt or import_tensorrt()
    poly = import_polygraphy()
    from polygraphy.exception import PolygraphyException

    shapes = profile_shapes(spec, limits)
    profile = poly.Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, lo, opt, hi)
    pools = {trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)} if workspace_bytes else None
    state: dict[str, Any] = {}

    def finish(builder: Any, network: Any, config: Any) -> None:
        """What Polygraphy leaves unchecked: the profile and the timing cache."""
        inputs = {network.get_input(i).name for i in range(network.num_inputs)}
        if inputs != set(shapes):
            raise ExportError(
                f"{spec.name}: the network's inputs {sorted(inputs)} are not the I/O spec's {sorted(shapes)}"
            )
        if config.num_optimization_profiles != 1:
            raise ExportError(f"TensorRT rejected the optimisation profile of {spec.name}")
        if timing_cache and not config.set_timing_cache(config.create_timing_cache(timing_cache), False):
            log.warning(
                "the timing cache was made on another GPU or TensorRT version; building %s with a new one", spec.name
            )
            if not config.set_timing_cache(config.create_timing_cache(b""), False):
                raise ExportError("TensorRT refused an empty timing cache")
        state["config"] = config

    config = poly.PostprocessConfig(poly.CreateConfig(tf32=tf32, profiles=[profile], memory_pool_limits=pools), finish)
    network = poly.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    try:
        plan = poly.EngineBytesFromNetwork(network, config)()
    except SedTrtError:
        raise
    except PolygraphyException as exc:
        raise ExportError(
            f"TensorRT could not build {Path(onnx_path).name}: {str(exc).strip().splitlines()[0]}"
        ) from None
    if not plan:
        raise ExportError(f"TensorRT failed to build {spec.name} (see the TensorRT log above)")
    cache = state["config"].get_timing_cache() if "config" in state else None
    return bytes(plan), (bytes(cache.serialize()) if cache is not None else None)


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
    device: str | int = 0,
    progress: bool = True,
) -> Manifest:
    """Build an engine for every graph of an engine directory and record them in its manifest.

    ``precision`` picks the graphs: fp32, or fp16 / int8 / fp8 (those graphs, the fp32 one where
    a graph has none); strongly typed, the engines compute in their types.
    """
    trt = trt or import_tensorrt()
    gpu_name, capability = gpu or gpu_info(device)
    directory = Path(engine_dir)
    manifest = Manifest.load(directory)
    graphs = manifest.graphs_for(precision)
    if precision == "fp8" and _capability(capability) < FP8_MIN_CAPABILITY:
        # TensorRT refuses at build time: "Networks with FP8 Q/DQ layers require hardware with FP8
        # support" (Ada 8.9 and Hopper 9.0 on; NVIDIA Model-Optimizer issue 70, TensorRT 10.3).
        raise ExportError(
            f"fp8 engines need an Ada or Hopper GPU (compute capability 8.9 or later); {gpu_name} is {capability}: "
            "build int8 or fp16 engines instead"
        )
    manifest.verify_files(directory, which=("graph",))  # never build an engine from a corrupt graph
    limits = manifest.limits  # decoder profiles span 1..class_chunk classes, optimised for a full chunk
    cache_path = directory / timing_cache_name(str(trt.__version__), capability)
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    specs = manifest.specs
    for i, (name, onnx_file) in enumerate(graphs.items(), 1):
        step(f"[{i}/{len(graphs)}] building TensorRT engine {name} ({precision})", enabled=progress)
        plan, new_cache = build_engine(
            directory / onnx_file,
            specs[name],
            limits,
            timing_cache=cache,
            workspace_bytes=workspace_bytes,
            tf32=tf32,
            trt=trt,
        )
        cache = new_cache if new_cache is not None else cache
        types = precision if onnx_file != manifest.graphs[name] else "fp32"  # the text encoder stays fp32
        plan_file = f"{name}.{precision}.plan"
        atomic_write(directory / plan_file, _bytes_writer(plan))
        shapes = profile_shapes(specs[name], limits)
        manifest.engines[name] = EngineEntry(
            file=plan_file,
            precision=f"{types}+tf32" if tf32 else types,
            tensorrt_version=str(trt.__version__),
            gpu_name=gpu_name,
            compute_capability=capability,
            profiles={inp: [list(s) for s in triple] for inp, triple in shapes.items()},
            onnx_file=onnx_file,
            sha256=hashlib.sha256(plan).hexdigest(),
        )
        manifest.save(directory)  # an interrupted build keeps the engines already built
    if cache:
        atomic_write(cache_path, _bytes_writer(cache))
    step(
        f"engines recorded in {directory / 'manifest.json'}: {json.dumps({k: v.file for k, v in manifest.engines.items()})}",
        enabled=progress,
    )
    return manifest
