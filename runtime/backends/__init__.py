"""Backends: each runs the graphs of :mod:`runtime.io_spec` and supplies array ops for CER."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from runtime.backends.base import ArrayOps, Backend, EngineDirBackend, NumpyOps
from runtime.errors import ConfigError

# name -> "module:Class"; imported only when chosen, so no backend library is needed to import runtime.
# Packages above runtime add their own with register_backend (``import sed`` registers "torch").
BACKENDS: dict[str, str] = {
    "onnxruntime": "runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "runtime.backends.openvino_backend:OpenVINOBackend",
    "tensorrt": "runtime.backends.tensorrt_backend:TensorRTBackend",
}
# Backends that live in a higher layer, and the package whose import registers them.
PROVIDED_BY = {"torch": "sed"}


def register_backend(name: str, target: str) -> None:
    """Make ``create_backend(name)`` build ``target`` ("module:Class"), imported when first chosen."""
    BACKENDS[name] = target


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (imports its module lazily)."""
    if name not in BACKENDS:
        if name in PROVIDED_BY:
            raise ConfigError(
                f"the {name} backend is provided by the {PROVIDED_BY[name]!r} package: import {PROVIDED_BY[name]} first"
            )
        raise ConfigError(f"unknown backend {name!r}; available: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a backend by name; construction stores options only (no heavy work)."""
    return backend_class(name)(**kwargs)


def parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """A backend label as tables print it (``onnxruntime``, ``openvino-bf16``) -> (name, options)."""
    name, _, precision = label.partition("-")
    if name not in BACKENDS and name not in PROVIDED_BY:
        raise ConfigError(
            f"unknown backend {label!r}; available: {sorted(BACKENDS)} (and openvino-bf16, onnxruntime-fp16)"
        )
    if precision and (name, precision) not in (
        ("openvino", "bf16"),
        ("onnxruntime", "fp16"),
        ("torch", "bf16"),
        ("torch", "fp16"),
    ):
        raise ConfigError(
            f"unknown backend {label!r}: the precision labels are openvino-bf16, onnxruntime-fp16, torch-bf16 and torch-fp16"
        )
    return name, ({"precision": precision} if precision else {})


def open_backend(
    name: str,
    *,
    engine_dir: str | Path | None = None,
    backbone: Any = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    pooling: int = 1,
    image_size: int | None = None,
    threads: int | None = None,
    precision: str = "f32",
    release_memory: bool = False,
    ort_arena: bool | None = None,
) -> Backend:
    """Create (not activate) a backend for a request, refusing one that cannot serve it.

    The one home of the compatibility rules every caller needs: an engine directory must have
    been exported with this pooling, input size, backbone and checkpoint; a precision other
    than f32 is an OpenVINO option. ``name`` may be a label such as ``openvino-bf16``.
    """
    name, options = parse_label(name)
    if precision != "f32":
        if name != "openvino":
            raise ConfigError(f"--precision {precision} applies to --backend openvino only")
        options["precision"] = precision
    if release_memory:
        if name != "openvino":
            raise ConfigError("--release-memory applies to --backend openvino only")
        options["release_memory"] = True
    if ort_arena is not None:
        if name != "onnxruntime":
            raise ConfigError("--ort-arena/--no-ort-arena applies to --backend onnxruntime only")
        options["mem_arena"] = ort_arena
    if name == "torch":
        if backbone is None:
            raise ConfigError("--backbone is required with --backend torch")
        return create_backend(
            "torch", backbone=backbone, weights=weights, device=device, pooling=pooling, threads=threads, **options
        )
    if engine_dir is None:
        raise ConfigError(f"--engine-dir is required with --backend {name} (make one with 'sed-trt export')")
    if name == "tensorrt":
        gpu = device if str(device).startswith("cuda") else "cuda"  # the default cpu names no GPU: the first one
        backend = create_backend("tensorrt", engine_dir=engine_dir, backbone=backbone, device=gpu)
    else:
        backend = create_backend(name, engine_dir=engine_dir, threads=threads, backbone=backbone, **options)
    assert isinstance(backend, EngineDirBackend)
    backend.check_compatible(pooling=pooling, image_size=image_size, weights=weights)
    return backend


__all__ = [
    "BACKENDS",
    "ArrayOps",
    "Backend",
    "EngineDirBackend",
    "NumpyOps",
    "backend_class",
    "create_backend",
    "open_backend",
    "parse_label",
    "register_backend",
]
