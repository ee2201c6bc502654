"""PyTorch reference of SED (CVPR 2024) that loads the authors' released checkpoints.

Layer: above ``runtime`` (it uses runtime's constants, errors and I/O spec, and registers
the ``torch`` backend with it); below ``export``, ``benchmarks`` and the ``sed_trt`` CLI.
Importing the package registers the backend without importing torch; the names below load
their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sed_trt.runtime.backends.registry import register_backend

register_backend("sed_trt.sed.backend")

_LAZY = {
    "build_sed": "sed_trt.sed.build",
    "load_sed": "sed_trt.sed.build",
    "ClipConfig": "sed_trt.sed.config",
    "DecoderConfig": "sed_trt.sed.config",
    "SEDConfig": "sed_trt.sed.config",
    "list_models": "sed_trt.sed.config",
    "load_config": "sed_trt.sed.config",
    "SED": "sed_trt.sed.modeling.sed",
    "SEDOutput": "sed_trt.sed.modeling.sed",
}

if TYPE_CHECKING:
    from sed_trt.sed.build import build_sed, load_sed
    from sed_trt.sed.config import ClipConfig, DecoderConfig, SEDConfig, list_models, load_config
    from sed_trt.sed.modeling.sed import SED, SEDOutput


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sed_trt.sed' has no attribute {name!r}")


__all__ = [
    "SED",
    "ClipConfig",
    "DecoderConfig",
    "SEDConfig",
    "SEDOutput",
    "build_sed",
    "list_models",
    "load_config",
    "load_sed",
]
