"""Low-latency SED inference over pluggable backends (ONNX Runtime, TensorRT, PyTorch).

Importing this package needs only numpy; backends import their libraries lazily.
"""

from runtime.errors import (
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
