"""Low-latency SED inference over pluggable backends (ONNX Runtime, OpenVINO, TensorRT; PyTorch from ``sed``).

Layer: the bottom one, the torch-free core every other package stands on; it imports none of
them (``import sed`` registers the torch backend here). Importing it needs only numpy;
backends import their libraries lazily.
"""

from sed_trt.runtime.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DatasetError,
    EngineError,
    ImageError,
    SedTrtError,
    VocabularyError,
)

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EngineError",
    "ImageError",
    "SedTrtError",
    "VocabularyError",
]
