"""TensorRT builder and backend against a fake of the TensorRT API (CPU-only CI).

The fake enforces what TensorRT enforces (profiles, shapes, addresses, alignment) and
computes with ONNX Runtime, so a predictor on the TensorRT backend must give the ONNX
Runtime backend's result. Real-GPU tests live in tests/test_gpu.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from export.trt_build import build_engines, profile_shapes
from runtime.backends import create_backend
from runtime.errors import EngineError, ExportError, InputError
from runtime.io_spec import GRAPH_NAMES
from runtime.manifest import Manifest
from runtime.predictor import Predictor
from tests import fake_tensorrt

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def trt_dir(parity_engine_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "engines"
    shutil.copytree(parity_engine_dir, out)
    fake_tensorrt.CALLS.clear()
    build_engines(out, trt=fake_tensorrt, gpu=("Fake GPU", "9.0"), progress=False)
    return out


def test_builder_uses_strong_typing_and_profiles_cover_runtime_ranges(trt_dir):
    manifest = Manifest.load(trt_dir)
    assert set(manifest.engines) == set(GRAPH_NAMES)
    creates = [c for c in fake_tensorrt.CALLS if c[0] == "create_network"]
    assert creates and all(
        flags == 1 << fake_tensorrt.NetworkDefinitionCreationFlag.STRONGLY_TYPED for _, flags in creates
    )
    builds = {c[1].split("/")[-1]: c[2] for c in fake_tensorrt.CALLS if c[0] == "build"}
    stage1 = builds["decoder_stage1_summaries.onnx"]["features"]
    chunk = manifest.limits.class_chunk
    assert (
        stage1[0][1] == 1 and stage1[1][1] == chunk and stage1[2][1] == chunk
    )  # N: 1..class_chunk, tuned for a full chunk
    for name, spec in manifest.specs.items():
        for inp, (lo, opt, hi) in profile_shapes(spec, manifest.limits).items():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            assert manifest.engines[name].profiles[inp][2] == list(hi)
    entry = manifest.engines["decoder_stage0"]
    assert (
        entry.tensorrt_version == fake_tensorrt.__version__
        and entry.compute_capability == "9.0"
        and entry.precision == "fp32"
    )
    assert (trt_dir / "timing.cache").read_bytes().startswith(b"fake-timing-cache")


@pytest.mark.parametrize("topk", [None, 2])
def test_trt_backend_runs_the_shared_predictor(trt_dir, parity, parity_image, topk):
    trt_backend = create_backend(
        "tensorrt", engine_dir=trt_dir, device="cpu", trt_module=fake_tensorrt, check_gpu=False
    ).activate()
    ort_backend = create_backend("onnxruntime", engine_dir=trt_dir).activate()
    results = []
    for backend in (trt_backend, ort_backend):
        pred = Predictor(backend, topk=topk)
        pred.set_classes(parity["classes"])
        results.append(pred.predict(parity_image))
    np.testing.assert_allclose(results[0].probs, results[1].probs, atol=1e-5)
    np.testing.assert_array_equal(results[0].kept, results[1].kept)
    assert trt_backend.calls >= 5
    executes = [c for c in fake_tensorrt.CALLS if c[0] == "execute"]
    if topk is not None:
        t_sizes = {dict(c[1])["features"][1] for c in executes if "features" in dict(c[1])}
        assert min(t_sizes) < len(parity["classes"]), "CER must shrink T between engines"


def test_trt_backend_refuses_mismatches(trt_dir, parity):
    with pytest.raises(EngineError, match="no TensorRT engines"):
        create_backend("tensorrt", engine_dir=_onnx_only(trt_dir))
    manifest = Manifest.load(trt_dir)
    manifest.engines["decoder_stage1_fuse"].tensorrt_version = "10.0.0"
    other = trt_dir.parent / "old"
    shutil.copytree(trt_dir, other, dirs_exist_ok=True)
    manifest.save(other)
    with pytest.raises(EngineError, match="built with TensorRT 10.0.0"):
        create_backend("tensorrt", engine_dir=other, device="cpu", trt_module=fake_tensorrt, check_gpu=False).activate()
    backend = create_backend(
        "tensorrt", engine_dir=trt_dir, device="cpu", trt_module=fake_tensorrt, check_gpu=False
    ).activate()
    chunk = manifest.limits.class_chunk
    feeds = {
        "clip_dense": np.zeros((1, 48, 24, 24), np.float32),
        "text_features": np.zeros((chunk + 1, 80, 48), np.float32),
    }
    with pytest.raises(InputError, match=f"the engines accept at most {chunk}"):
        backend.run("decoder_stage0", feeds)
    feeds = {"clip_dense": np.zeros((2, 48, 24, 24), np.float32), "text_features": np.zeros((1, 80, 48), np.float32)}
    with pytest.raises(EngineError, match="outside the engine profile"):
        backend.run("decoder_stage0", feeds)


def _onnx_only(trt_dir):
    plain = trt_dir.parent / "plain"
    shutil.copytree(trt_dir, plain, dirs_exist_ok=True)
    manifest = Manifest.load(plain)
    manifest.engines.clear()
    manifest.save(plain)
    return plain


def test_fp16_on_tensorrt_11_is_refused_clearly(trt_dir):
    from export.trt_build import build_engine

    manifest = Manifest.load(trt_dir)
    with pytest.raises(ExportError, match="fp16 on TensorRT 11"):
        build_engine(
            trt_dir / "decoder_stage0.onnx",
            manifest.specs["decoder_stage0"],
            manifest.limits,
            precision="fp16",
            trt=fake_tensorrt,
        )


def test_fp32_engines_clear_tf32_and_a_foreign_timing_cache_is_replaced(trt_dir, caplog, monkeypatch):
    """TensorRT turns TF32 on by default: an "fp32" build must clear it; a refused cache must not crash."""
    import logging

    from export.trt_build import build_engine

    monkeypatch.setattr(logging.getLogger("sed_trt"), "propagate", True)  # the CLI's handler stops it

    manifest = Manifest.load(trt_dir)
    spec = manifest.specs["decoder_stage0"]
    fake_tensorrt.CALLS.clear()
    _, cache = build_engine(
        trt_dir / "decoder_stage0.onnx", spec, manifest.limits, timing_cache=b"foreign-gpu", trt=fake_tensorrt
    )
    flags = [c[2] for c in fake_tensorrt.CALLS if c[0] == "build_flags"]
    assert flags and fake_tensorrt.BuilderFlag.TF32 not in flags[-1]
    assert "another GPU or TensorRT version" in caplog.text and not cache.startswith(b"foreign")
    build_engine(trt_dir / "decoder_stage0.onnx", spec, manifest.limits, tf32=True, trt=fake_tensorrt)
    assert fake_tensorrt.BuilderFlag.TF32 in [c[2] for c in fake_tensorrt.CALLS if c[0] == "build_flags"][-1]
