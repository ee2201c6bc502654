"""sed-trt's top floor: the Python API (:mod:`sed_trt.api`) and the ``sed-trt`` command line.

Layers, bottom to top; each imports only from the layers below it:

- ``runtime``: the torch-free core (I/O spec, manifest, backends for ONNX Runtime, OpenVINO
  and TensorRT, the shared CER predictor, tokenizer, vocabularies, pre/post-processing,
  datasets, evaluation, file integrity). Needs numpy, Pillow and one inference engine.
- ``sed``: the PyTorch model, its checkpoints and training; registers the ``torch`` backend.
- ``export``: model -> ONNX graphs -> TensorRT engines.
- ``benchmarks``: the benchmark harness and its figures.
- ``sed_trt``: this package, the Python API and the command line; each a few lines over the above.
"""

from runtime.errors import (
    BackendUnavailableError,
    ConfigError,
    EngineError,
    ImageError,
    SedTrtError,
    StateError,
    VocabularyError,
)
from sed_trt.api import Segmentation, Segmenter, segment

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "EngineError",
    "ImageError",
    "SedTrtError",
    "Segmentation",
    "Segmenter",
    "StateError",
    "VocabularyError",
    "segment",
]
