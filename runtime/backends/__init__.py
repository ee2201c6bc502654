"""Backends: each runs the graphs of :mod:`runtime.io_spec` and supplies array ops for the predictor.

Every backend is a plug-in (:mod:`sed_trt.runtime.backends.registry`): one module with a ``SPEC``
and a class. Tools open them with :func:`open_backend`; :func:`create_backend` builds one
by name with its own constructor's arguments (library code and tests).
"""

from __future__ import annotations

from typing import Any

from sed_trt.runtime.backends.base import ArrayOps, Backend, EngineDirBackend, NumpyOps
from sed_trt.runtime.backends.registry import (
    BackendRequest,
    BackendSpec,
    Option,
    all_labels,
    backend_spec,
    backend_specs,
    open_backend,
    parse_label,
    register_backend,
)


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (imports its module, not its library)."""
    return backend_spec(name).backend_class()


def create_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a backend by name with its constructor's arguments (no heavy work until activate)."""
    return backend_class(name)(**kwargs)


__all__ = [
    "ArrayOps",
    "Backend",
    "BackendRequest",
    "BackendSpec",
    "EngineDirBackend",
    "NumpyOps",
    "Option",
    "all_labels",
    "backend_class",
    "backend_spec",
    "backend_specs",
    "create_backend",
    "open_backend",
    "parse_label",
    "register_backend",
]
