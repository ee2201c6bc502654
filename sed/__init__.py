"""PyTorch reference of SED (CVPR 2024) that loads the authors' released checkpoints.

Layer: above ``runtime`` (it uses runtime's constants, errors and I/O spec, and registers
the ``torch`` backend with it); below ``export``, ``benchmarks`` and the ``sed_trt`` CLI.
Importing the package registers the backend without importing torch; the names below load
their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runtime.backends.registry import register_backend

register_backend("sed.backend")

_LAZY = {
    "build_sed": "sed.build",
    "load_sed": "sed.build",
    "ClipConfig": "sed.config",
    "DecoderConfig": "sed.config",
    "SEDConfig": "sed.config",
    "list_models": "sed.config",
    "load_config": "sed.config",
    "SED": "sed.modeling.sed",
    "SEDOutput": "sed.modeling.sed",
}

if TYPE_CHECKING:
    from sed.build import build_sed, load_sed
    from sed.config import ClipConfig, DecoderConfig, SEDConfig, list_models, load_config
    from sed.modeling.sed import SED, SEDOutput


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sed' has no attribute {name!r}")


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
