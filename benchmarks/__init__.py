"""Benchmark harness (ms/image, memory, per-part times) and its figures.

Layer: above ``runtime``, ``sed`` and ``export``; below the ``sed_trt`` command line.
"""
