"""sed-trt's top floor: the ``sed-trt`` command line (``python -m sed_trt``).

Layers, bottom to top; each imports only from the layers below it:

- ``runtime``: the torch-free core (I/O spec, manifest, backends for ONNX Runtime, OpenVINO
  and TensorRT, the shared CER predictor, tokenizer, vocabularies, pre/post-processing,
  datasets, evaluation, file integrity). Needs numpy, Pillow and one inference engine.
- ``sed``: the PyTorch model, its checkpoints and training; registers the ``torch`` backend.
- ``export``: model -> ONNX graphs -> TensorRT engines.
- ``benchmarks``: the benchmark harness and its figures.
- ``sed_trt``: this package, the command line; every command is a few lines over the above.
"""
