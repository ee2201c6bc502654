"""PyTorch reference of SED (CVPR 2024) that loads the authors' released checkpoints.

Layer: above ``runtime`` (it uses runtime's constants, errors and I/O spec, and registers
the ``torch`` backend with it); below ``export``, ``benchmarks`` and the ``sed_trt`` CLI.
"""

from runtime.backends import register_backend
from sed.build import build_sed, load_sed
from sed.config import ClipConfig, DecoderConfig, SEDConfig, list_models, load_config
from sed.modeling.sed import SED, SEDOutput

register_backend("torch", "sed.backend:TorchBackend")

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
