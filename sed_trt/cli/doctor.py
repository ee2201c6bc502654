"""``sed-trt doctor``: what this machine can run, and why not (one line per component)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from importlib import metadata

from sed_trt.cli.args import add_subcommand
from sed_trt.runtime.backends.registry import probe_all
from sed_trt.runtime.errors import BackendUnavailableError, ConfigError, SedTrtError, install_hint


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _probe(fn: Callable[[], str]) -> tuple[bool, str]:
    try:
        return True, fn()
    except SedTrtError as exc:
        return False, str(exc)
    except Exception as exc:  # a broken install raises anything
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _gpu(device: str, found: dict[str, str]) -> str:
    from sed_trt.runtime.backends.cuda_ops import CudaMemory
    from sed_trt.runtime.backends.tensorrt_backend import device_index

    memory = CudaMemory(device_index(device))
    try:
        name, capability = memory.properties()
        driver = memory.cudart.cudaDriverGetVersion()[1]
    finally:
        memory.close()
    found["capability"] = capability
    return f"{name}, compute capability {capability}, CUDA driver {driver // 1000}.{driver % 1000 // 10}"


def _module(name: str, dist: str, extra: str | None = None) -> Callable[[], str]:
    def probe() -> str:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if extra is None:
                raise
            raise BackendUnavailableError(f"{dist} is not installed ({exc.name}): {install_hint(extra)}") from None
        return _version(dist) or "installed"

    return probe


def _engines(engine_dir: str, found: dict[str, str]) -> str:
    """Verify an engine directory's files, and its engines against the TensorRT and GPU found here."""
    from sed_trt.runtime.manifest import Manifest

    manifest = Manifest.load(engine_dir)
    manifest.verify_files(engine_dir, which=("graph", "tokenizer", "engine"))
    weights = (
        "RANDOM WEIGHTS (exported without --weights: predictions are meaningless); "
        if manifest.checkpoint_sha256 is None
        else ""
    )
    if not manifest.engines:
        return f"{weights}{len(manifest.graphs)} graphs verified, no TensorRT engines yet (sed-trt build-engines)"
    versions = {e.tensorrt_version for e in manifest.engines.values()}
    capabilities = {e.compute_capability for e in manifest.engines.values()}
    built = {f"{e.gpu_name} ({e.compute_capability})" for e in manifest.engines.values()}
    precisions = sorted({e.precision for e in manifest.engines.values()})
    if "tensorrt" in found and versions != {found["tensorrt"]}:
        raise ConfigError(f"engines built with TensorRT {sorted(versions)}, this is {found['tensorrt']}: rebuild them")
    if "capability" in found and capabilities != {found["capability"]}:
        raise ConfigError(
            f"engines built for compute capability {sorted(capabilities)}, this GPU is {found['capability']}: rebuild them"
        )
    return f"{weights}graphs and {len(manifest.engines)} engines verified; TensorRT {sorted(versions)}, {precisions}, built on {sorted(built)}"


def _tritonserver() -> str:
    from sed_trt.serve.server import tritonserver_probe

    return tritonserver_probe()


def run(args: argparse.Namespace) -> int:
    """What this machine can run: engines, GPU, versions; with --gpu, fail unless TensorRT can run here."""
    checks: list[tuple[str, bool, str, bool]] = []  # name, ok, detail, needed for --gpu
    found: dict[str, str] = {}  # what the probes found: TensorRT version, GPU compute capability

    def check(name: str, fn: Callable[[], str], *, gpu: bool = False) -> None:
        ok, detail = _probe(fn)
        checks.append((name, ok, detail, gpu))

    check("numpy", _module("numpy", "numpy"))
    for spec, ok, detail in probe_all():  # every registered backend's own probe
        if spec.name == "tensorrt" and ok:
            found["tensorrt"] = detail
        checks.append((f"backend {spec.name}", ok, detail, spec.name == "tensorrt"))
    check("cuda-python", _module("cuda.bindings", "cuda-bindings", "trt"), gpu=True)
    check("GPU", lambda: _gpu(args.device, found), gpu=True)
    check("polygraphy (engine builds)", _module("polygraphy", "polygraphy", "trt"), gpu=True)
    check("onnxconverter-common (fp16 graphs)", _module("onnxconverter_common", "onnxconverter-common", "trt"))
    check("torch (export, training, torch backend)", _module("torch", "torch", "torch"))
    check("tritonclient (sed-trt client)", _module("tritonclient.http", "tritonclient", "serve"))
    check("tritonserver (sed-trt serve)", _tritonserver)
    if args.engine_dir:
        check(f"engine directory {args.engine_dir}", lambda: _engines(args.engine_dir, found), gpu=True)
    width = max(len(name) for name, *_ in checks)
    for name, ok, detail, _ in checks:
        print(f"{'ok ' if ok else '-- '} {name:<{width}}  {detail}")
    missing = [name for name, ok, _, needed in checks if needed and not ok]
    if args.gpu and missing:
        raise ConfigError(f"TensorRT cannot run here: {', '.join(missing)} (see above)")
    usable = [name.split()[1] for name, ok, *_ in checks if ok and name.startswith("backend ")]
    print(f"TensorRT {'can' if not missing else 'cannot'} run here; usable backends: {', '.join(usable)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "doctor", run)
    p.add_argument("--engine-dir", default=None, help="also verify this engine directory and its engines")
    p.add_argument("--device", default="cuda", help="GPU to check: cuda or cuda:N")
    p.add_argument("--gpu", action="store_true", help="exit 2 unless TensorRT, cuda-python and a GPU are usable")
