"""PyTorch reference of SED (CVPR 2024) that loads the authors' released checkpoints."""

from sed.build import build_sed, load_sed
from sed.config import ClipConfig, DecoderConfig, SEDConfig, list_models, load_config
from sed.modeling.sed import SED, SEDOutput

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
