"""sed-trt: fast, faithful deployment of SED open-vocabulary semantic segmentation.

One import root. Layers, bottom to top; each imports only from the layers below it:

- ``sed_trt.runtime``: the torch-free core (I/O spec, manifest, backends for ONNX Runtime,
  OpenVINO and TensorRT, the shared CER predictor, tokenizer, vocabularies, pre/post-processing,
  datasets, evaluation, file integrity). Needs numpy, Pillow and one inference engine.
- ``sed_trt.sed``: the PyTorch model, its checkpoints and training; registers the ``torch``
  backend (torch itself loads only when that backend is used; ``[torch]`` extra).
- ``sed_trt.export``: model -> ONNX graphs -> TensorRT engines.
- ``sed_trt.benchmarks``: the benchmark harness and its figures.
- ``sed_trt`` itself: the Python API (:mod:`sed_trt.api`), the command line and serving; each a
  few lines over the above.

The API names below load on first use, so ``import sed_trt.runtime.manifest`` stays light.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from sed_trt.runtime.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DatasetError,
    DeviceError,
    EngineError,
    ExportError,
    ImageError,
    InputError,
    SedTrtError,
    ServeError,
    StateError,
    TrainingError,
    VocabularyError,
    WriteError,
)

try:
    __version__ = metadata.version("sed-trt")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "Segmentation": "sed_trt.api",
    "Segmenter": "sed_trt.api",
    "segment": "sed_trt.api",
    "Deployment": "sed_trt.runtime.deployment",
}

if TYPE_CHECKING:
    from sed_trt.api import Segmentation, Segmenter, segment
    from sed_trt.runtime.deployment import Deployment


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sed_trt' has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "Deployment",
    "DeviceError",
    "EngineError",
    "ExportError",
    "ImageError",
    "InputError",
    "SedTrtError",
    "Segmentation",
    "Segmenter",
    "ServeError",
    "StateError",
    "TrainingError",
    "VocabularyError",
    "WriteError",
    "__version__",
    "segment",
]
