"""The Python API: one call, a loaded Segmenter, typed results and typed one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sed_trt
from sed_trt import ConfigError, ImageError, StateError, VocabularyError
from tests.parity import trim

pytestmark = pytest.mark.parity


def test_one_call_reproduces_the_official_labels(parity_dir, parity_engine_dir, parity, parity_image):
    result = sed_trt.segment(parity_dir / "image.png", parity["classes"], engine_dir=parity_engine_dir)
    assert isinstance(result, sed_trt.Segmentation) and result.classes == tuple(parity["classes"])
    assert (result.labels == parity["expected"]["labels_pool1"]).mean() >= 0.999
    assert result.probs is None and result.kept.all() and result.timings["total_ms"] > 0
    areas = result.areas()
    assert abs(sum(areas.values()) - 1) < 1e-9 and list(areas.values()) == sorted(areas.values(), reverse=True)
    name = parity["classes"][int(result.labels[200, 300])]
    assert result.mask(name)[200, 300] and result.mask(name).sum() == (result.labels == result.labels[200, 300]).sum()
    vis = result.overlay(parity_image)  # the photo in class colours, a legend beside it
    assert vis.dtype == np.uint8 and vis.shape[0] >= 427 and vis.shape[1] > 640 and vis.shape[2] == 3


def test_segmenter_keeps_the_model_for_many_images(parity_dir, parity, parity_image):
    weights = parity_dir / "checkpoint.pth"
    backbone = str(parity_dir / "cfg" / "sed_tiny_linear.json")
    with sed_trt.Segmenter.from_checkpoint(weights, backbone=backbone, topk=2) as seg:
        seg.set_vocabulary(parity["classes"])
        first = seg.segment(parity_image, probs=True)  # an array
        again = seg.segment(Image.fromarray(parity_image), topk=8)  # a PIL image, another k for this image
        assert seg.backend.active
    assert not seg.backend.active
    exp = parity["expected"]
    np.testing.assert_array_equal(first.kept, exp["cer_k2_kept"])
    np.testing.assert_allclose(trim("cer_k2_probs", first.probs), exp["cer_k2_probs"], atol=1e-4)
    np.testing.assert_array_equal(again.kept, exp["cer_k8_kept"])


def test_errors_are_typed_and_one_line(parity_engine_dir, parity_image):
    seg = sed_trt.Segmenter.from_engine_dir(parity_engine_dir)
    with pytest.raises(StateError, match="no vocabulary"):
        seg.segment(parity_image)
    with pytest.raises(ImageError, match="expected a file path, a PIL image"):
        seg.segment([[1, 2]], ["sky"])
    with pytest.raises(ImageError, match="mode 'L'"):
        seg.segment(Image.new("L", (8, 8)), ["sky"])
    with pytest.raises(VocabularyError):
        seg.segment(parity_image, ["sky", "sky"])
    result = seg.segment(parity_image[:64, :64], ["sky", "tree"])
    with pytest.raises(VocabularyError, match="'road' is not in this result's vocabulary"):
        result.mask("road")
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        sed_trt.Segmenter.from_engine_dir(parity_engine_dir, backend="nope")
    with pytest.raises(ConfigError, match="--precision bf16 does not apply to --backend onnxruntime"):
        sed_trt.Segmenter.from_engine_dir(parity_engine_dir, precision="bf16")
    with pytest.raises(ConfigError, match="runs exported graphs"):
        sed_trt.segment(parity_image, ["sky"], backend="openvino")
    seg.close()
