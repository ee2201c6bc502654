"""Assertions several test modules share: the official parity outputs, device-array copies."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.parity import trim


def check_official(out: Any, parity: dict, topk: int | None, *, atol: float = 1e-4) -> None:
    """A prediction of the parity image against the official outputs: probabilities within
    ``atol``, the official CER kept set, and (without CER) >= 99.9 % of the official labels."""
    exp = parity["expected"]
    if topk is None:
        assert out.kept.all()
        assert (out.labels == exp["labels_pool1"]).mean() >= 0.999
        np.testing.assert_allclose(trim("logits_pool1", out.probs), 1 / (1 + np.exp(-exp["logits_pool1"])), atol=atol)
    else:
        np.testing.assert_array_equal(out.kept, exp[f"cer_k{topk}_kept"])
        np.testing.assert_allclose(trim(f"cer_k{topk}_probs", out.probs), exp[f"cer_k{topk}_probs"], atol=atol)


def check_device_copies(ops: Any) -> None:
    """Chunk views, strided writes and run-merged gathers on batched tensors (B > 1) equal numpy's."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 5)).astype(np.float32)
    dx = ops.from_numpy(x)
    np.testing.assert_array_equal(ops.to_numpy(dx), x)
    np.testing.assert_array_equal(ops.to_numpy(ops.narrow(dx, 1, 2, 6)), x[:, 2:6])
    idx = np.array([0, 1, 2, 4, 6])
    np.testing.assert_array_equal(ops.to_numpy(ops.take(dx, idx, 1)), x[:, idx])
    out = ops.zeros((2, 9, 3, 5))
    ops.write(out, 1, 4, ops.narrow(dx, 1, 0, 5))
    expected = np.zeros((2, 9, 3, 5), np.float32)
    expected[:, 4:9] = x[:, :5]
    np.testing.assert_array_equal(ops.to_numpy(out), expected)
    tokens = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(ops.to_numpy(ops.from_numpy(tokens)), tokens)


def onnxruntime_engine(engine: Any) -> list[str]:
    """The start of a ``sed-trt predict`` command line: ONNX Runtime on ``engine``."""
    return ["predict", "--backend", "onnxruntime", "--engine-dir", str(engine)]


def onnxruntime_predict(engine: Any, image: Any) -> list[str]:
    """:func:`onnxruntime_engine` and one image."""
    return [*onnxruntime_engine(engine), "--image", str(image)]


def tiny_export(out: Any, *extra: str) -> list[str]:
    """A ``sed-trt export`` command line: the tiny model (random weights) at 64 px into ``out``."""
    return ["export", "--backbone", "sed_tiny_linear", "--image-size", "64", "--out-dir", str(out), *extra]


def fake_plans(engine_dir: Any, out: Any) -> Any:
    """A copy of ``engine_dir`` in ``out`` with a placeholder TensorRT plan per graph recorded in
    its manifest: repository writers treat plans as opaque files, so the bls form is writable here."""
    import shutil

    from sed_trt.runtime.manifest import EngineEntry, Manifest

    shutil.copytree(engine_dir, out)
    manifest = Manifest.load(out)
    for name in manifest.graphs:
        (out / f"{name}.plan").write_bytes(b"plan")
        manifest.engines[name] = EngineEntry(f"{name}.plan", "fp32", "10.16", "Fake GPU", "9.0", sha256="0" * 64)
    manifest.save(out)
    return manifest
