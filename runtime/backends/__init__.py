"""Backends: each runs the graphs of :mod:`runtime.io_spec` and supplies array ops for CER."""

from __future__ import annotations

import importlib
from typing import Any

from runtime.backends.base import ArrayOps, Backend, EngineDirBackend, NumpyOps
from runtime.errors import ConfigError

# name -> "module:Class"; imported only when chosen, so no backend library is needed to import runtime.
BACKENDS: dict[str, str] = {
    "onnxruntime": "runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "runtime.backends.openvino_backend:OpenVINOBackend",
    "tensorrt": "runtime.backends.tensorrt_backend:TensorRTBackend",
    "torch": "sed.backend:TorchBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (imports its module lazily)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; available: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a backend by name; construction stores options only (no heavy work)."""
    return backend_class(name)(**kwargs)


def parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """A backend label as tables print it (``onnxruntime``, ``openvino-bf16``) -> (name, options)."""
    name, _, precision = label.partition("-")
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {label!r}; available: {sorted(BACKENDS)} (and openvino-bf16)")
    if precision and name != "openvino":
        raise ConfigError(f"unknown backend {label!r}: only openvino takes a precision suffix (openvino-bf16)")
    return name, ({"precision": precision} if precision else {})


__all__ = ["BACKENDS", "ArrayOps", "Backend", "EngineDirBackend", "NumpyOps", "backend_class", "create_backend", "parse_label"]
