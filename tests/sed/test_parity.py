"""The PyTorch reference reproduces every array of the official parity vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sed_trt.runtime.image import preprocess
from sed_trt.runtime.text_cache import encode_vocabulary
from sed_trt.runtime.tokenizer import ClipTokenizer
from sed_trt.sed.modeling.cost_map import cost_map
from sed_trt.sed.postprocess import labels_from_probs_torch
from tests.parity import trim

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def run(parity_model, parity, parity_image):
    m = parity_model
    x = torch.from_numpy(preprocess([parity_image], 768)["image"])
    with torch.no_grad():
        text = encode_vocabulary(
            lambda t: m.encode_text(torch.from_numpy(t)).numpy(), ClipTokenizer(), parity["classes"]
        )
        enc = m.encode_image(x, keep_features=True)
    return {"x": x, "text": text, "enc": enc}


def test_preprocessing_canvas(parity_model, parity, run):
    assert tuple(run["x"].shape) == (1, 3, *parity["meta"]["resized_hw"])
    canvas = parity_model.to_canvas(run["x"])[0].numpy()
    np.testing.assert_allclose(trim("canvas", canvas), parity["expected"]["canvas"], atol=1e-5)


def test_text_features(parity, run):
    assert run["text"].shape == parity["expected"]["text_features"].shape
    np.testing.assert_allclose(run["text"], parity["expected"]["text_features"], atol=1e-5)


def test_encoder_features(parity, run):
    exp = parity["expected"]
    enc = run["enc"]
    np.testing.assert_allclose(trim("res4", enc.features.res4[0].numpy()), exp["res4"], atol=1e-4)
    np.testing.assert_allclose(trim("res5", enc.features.res5[0].numpy()), exp["res5"], atol=1e-4)
    np.testing.assert_allclose(enc.clip_dense[0].numpy(), exp["clip_vis_dense"], atol=1e-4)


def test_cost_map_and_aux_heads(parity_model, parity, run):
    exp = parity["expected"]
    m, enc, text = parity_model, run["enc"], torch.from_numpy(run["text"])
    with torch.no_grad():
        cm = cost_map(enc.clip_dense, text)[0].permute(1, 0, 2, 3).numpy()  # T P H W -> P T H W (official layout)
        o0 = m.decode_stage0(enc.clip_dense, text)
        o1 = m.decode_stage(1, o0.features, corr_guidance=o0.corr_guidance, guidance=enc.guidance[0])
        o2 = m.decode_stage(2, o1.features, corr_guidance=o1.corr_guidance, guidance=enc.guidance[1])
    np.testing.assert_allclose(trim("cost_map", cm), exp["cost_map"], atol=1e-5)
    np.testing.assert_allclose(o0.aux_logits[0].numpy(), exp["aux_24"], atol=1e-4)
    np.testing.assert_allclose(o1.aux_logits[0].numpy(), exp["aux_48"], atol=1e-4)
    np.testing.assert_allclose(trim("aux_96", o2.aux_logits[0].numpy()), exp["aux_96"], atol=1e-4)


@pytest.mark.parametrize("pooling", [1, 2])
def test_final_logits_and_labels(parity_model, parity, parity_image, run, pooling):
    exp = parity["expected"]
    out = parity_model(run["x"], torch.from_numpy(run["text"]), pooling=pooling)
    np.testing.assert_allclose(trim("logits_pool1", out.logits[0].numpy()), exp[f"logits_pool{pooling}"], atol=1e-4)
    probs = out.probs[0]
    np.testing.assert_allclose(
        trim("logits_pool1", probs.numpy()), 1 / (1 + np.exp(-exp[f"logits_pool{pooling}"])), atol=1e-4
    )
    assert bool(out.kept.all())
    if pooling == 1:
        labels = labels_from_probs_torch(probs, parity_image.shape[:2]).numpy()
        assert (labels == exp["labels_pool1"]).mean() >= 0.999


@pytest.mark.parametrize("topk", [1, 2, 8])
def test_cer(parity_model, parity, parity_image, run, topk):
    exp = parity["expected"]
    out = parity_model(run["x"], torch.from_numpy(run["text"]), topk=topk)
    np.testing.assert_array_equal(out.kept.numpy(), exp[f"cer_k{topk}_kept"])
    probs = out.probs[0].numpy()
    np.testing.assert_allclose(trim("cer_k1_probs", probs), exp[f"cer_k{topk}_probs"], atol=1e-4)
    assert (probs[~exp[f"cer_k{topk}_kept"]] == 0).all(), "rejected classes must be exactly 0"
    labels = labels_from_probs_torch(out.probs[0], parity_image.shape[:2]).numpy()
    assert (labels == exp[f"cer_k{topk}_labels"]).mean() >= 0.999


def test_cer_topk_at_least_vocabulary_equals_no_rejection(parity_model, run):
    text = torch.from_numpy(run["text"])
    full = parity_model(run["x"], text)
    same = parity_model(run["x"], text, topk=len(text))
    assert torch.equal(full.probs, same.probs)
