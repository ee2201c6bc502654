"""OpenVINO backend: official parity in fp32, precision pinned, bf16 only as a checked opt-in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sed_trt.cli import main
from sed_trt.runtime.backends import create_backend
from sed_trt.runtime.backends.base import DEVICE_GRAPHS
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.io_spec import GRAPH_NAMES
from sed_trt.runtime.predictor import Predictor
from tests.checks import onnxruntime_engine
from tests.parity import trim

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def ov_backend(parity_engine_dir, tmp_path_factory):
    backend = create_backend("openvino", engine_dir=parity_engine_dir, cache_dir=tmp_path_factory.mktemp("ovcache"))
    with backend:
        yield backend


@pytest.mark.parametrize("topk", [1, 2, 8])
def test_fp32_holds_the_official_vectors(ov_backend, parity, parity_image, topk):
    exp = parity["expected"]
    pred = Predictor(ov_backend, topk=topk)
    pred.set_classes(parity["classes"])
    out = pred.predict(parity_image)
    np.testing.assert_array_equal(out.kept, exp[f"cer_k{topk}_kept"])
    np.testing.assert_allclose(trim(f"cer_k{topk}_probs", out.probs), exp[f"cer_k{topk}_probs"], atol=1e-4)
    assert (out.labels == exp[f"cer_k{topk}_labels"]).mean() >= 0.999


def test_one_request_per_graph_serves_every_vocabulary_size(ov_backend, parity, parity_image):
    """Dynamic class chunks: vocabularies of 1, 5 and 24 classes run on the same compiled graphs."""
    requests = dict(ov_backend._runners)
    for n in (1, 5, 24):
        pred = Predictor(ov_backend)
        pred.set_classes(parity["classes"][:n])
        assert pred.predict(parity_image).probs.shape == (n, 192, 192)
    # every graph but CER's and the labels' (a host backend does those on the host)
    assert ov_backend._runners == requests and set(requests) == set(GRAPH_NAMES) - set(DEVICE_GRAPHS)


def test_precision_is_pinned_and_bf16_needs_native_support(parity_engine_dir, monkeypatch):
    import openvino as ov

    import sed_trt.runtime.backends.openvino_backend as ovb

    core = ov.Core()
    assert create_backend("openvino", engine_dir=parity_engine_dir).config(core)["INFERENCE_PRECISION_HINT"] == "f32"
    assert create_backend("openvino", engine_dir=parity_engine_dir, precision="bf16").label == "openvino-bf16"
    monkeypatch.setattr(ovb, "native_bf16", lambda core: False)
    with pytest.raises(ConfigError, match="needs a CPU with native bf16"):
        create_backend("openvino", engine_dir=parity_engine_dir, precision="bf16").activate()
    with pytest.raises(ConfigError, match="not an OpenVINO precision"):
        create_backend("openvino", engine_dir=parity_engine_dir, precision="fp16")


def test_bf16_keeps_the_image_encoder_in_f32_unless_asked(parity_engine_dir, tmp_path):
    """Per-graph precision: bf16 compiles the decoder graphs in bf16 and the image encoder in f32
    (measured: the encoder's bf16 alone changed CER's kept set on full-size ConvNeXt-B);
    --ov-bf16-encoder compiles it in bf16 too."""
    import openvino as ov

    from sed_trt.runtime.backends.openvino_backend import native_bf16

    if not native_bf16(ov.Core()):
        pytest.skip("this CPU has no native bf16 (AMX or AVX512-BF16)")
    for bf16_encoder, encoder_type in ((False, ov.Type.f32), (True, ov.Type.bf16)):
        backend = create_backend(
            "openvino", engine_dir=parity_engine_dir, precision="bf16", bf16_encoder=bf16_encoder, cache_dir=tmp_path
        )
        with backend:
            hints = {g: c.get_property("INFERENCE_PRECISION_HINT") for g, c in backend._compiled.items()}
        assert hints.pop("image_encoder") == encoder_type
        assert hints and set(hints.values()) == {ov.Type.bf16}
    with pytest.raises(ConfigError, match="--ov-bf16-encoder applies to --precision bf16 only"):
        create_backend("openvino", engine_dir=parity_engine_dir, bf16_encoder=True)


def test_cli_precision_and_compare(parity_dir, parity_engine_dir, tmp_path, capsys):
    base = [
        "--image",
        str(parity_dir / "image.png"),
        "--classes",
        "sky; tree; road, route; person",
        "--no-cache",
        "--quiet",
    ]
    assert main([*onnxruntime_engine(parity_engine_dir), "--precision", "bf16", *base]) == 2
    assert (
        "--precision bf16 does not apply to --backend onnxruntime (it runs fp32, fp16, int8, fp8)"
        in capsys.readouterr().err
    )
    assert (
        main(
            [
                "predict",
                "--backend",
                "openvino",
                "--engine-dir",
                str(parity_engine_dir),
                "--save-npz",
                str(tmp_path / "ov.npz"),
                *base,
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "ov.npz")["probs"].shape == (4, 192, 192)
    out = tmp_path / "cmp.json"
    assert (
        main(
            [
                "compare",
                "--engine-dir",
                str(parity_engine_dir),
                "--backends",
                "openvino",
                "--topk",
                "2",
                "--out-json",
                str(out),
                *base,
            ]
        )
        == 0
    )
    assert "| openvino |" in capsys.readouterr().out
    ref, ov_row = json.loads(out.read_text())["rows"]
    assert ref["backend"] == "onnxruntime" and ref["max_abs_dprob"] == 0.0
    assert ov_row["max_abs_dprob"] < 1e-4 and ov_row["kept_identical"] and ov_row["label_agreement"] > 0.999


def test_release_memory_gives_the_same_result(ov_backend, parity_engine_dir, parity, parity_image, tmp_path):
    pred = Predictor(ov_backend, topk=2)
    pred.set_classes(parity["classes"])
    want = pred.predict(parity_image)
    lean = create_backend("openvino", engine_dir=parity_engine_dir, release_memory=True, cache_dir=tmp_path)
    with lean:
        p2 = Predictor(lean, topk=2)
        p2.set_classes(parity["classes"])
        for _ in range(2):  # the second run re-allocates what the first released
            got = p2.predict(parity_image)
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_array_equal(got.probs, want.probs)
