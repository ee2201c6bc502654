"""Model -> ONNX graphs (split at the CER points, dynamic category axis) -> TensorRT engines.

Layer: above ``runtime`` (I/O spec, manifest, integrity) and ``sed`` (the model it exports);
below ``benchmarks`` and the ``sed_trt`` command line.
"""
