"""Benchmarks of sed-trt backends."""
