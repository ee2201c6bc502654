"""The torch backend: reduced precision with fp32 islands, CUDA graphs' preconditions, CER's rule on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sed_trt.runtime.backends import create_backend
from sed_trt.runtime.cer import topk_union
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.predictor import Predictor
from sed_trt.sed.modeling.cer import cer_keep
from tests.parity import trim


@pytest.mark.parity
@pytest.mark.parametrize("topk", [None, 1, 2, 8])
def test_bf16_keeps_the_official_kept_sets(parity_model, parity, parity_image, topk):
    """bf16 with the fp32 islands: probabilities within 2e-2 of the official outputs, and the
    same CER kept sets (the heads decide them in fp32). Labels are not compared: the tiny
    model's classes are near-ties."""
    with create_backend("torch", model=parity_model, precision="bf16") as backend:
        pred = Predictor(backend, topk=topk)
        pred.set_classes(parity["classes"])
        out = pred.predict(parity_image)
        probs = out.probs
        assert backend.label == "torch-bf16"
    exp = parity["expected"]
    ref = 1 / (1 + np.exp(-exp["logits_pool1"])) if topk is None else exp[f"cer_k{topk}_probs"]
    probs = trim("cer_k1_probs", probs)
    kept = np.ones(len(parity["classes"]), bool) if topk is None else exp[f"cer_k{topk}_kept"]
    np.testing.assert_array_equal(out.kept, kept)
    assert np.abs(probs - ref).max() <= 2e-2
    assert np.abs(probs - ref).max() > 1e-5  # really reduced precision
    assert probs.dtype == np.float32


def test_islands_are_removed_and_fp32_is_untouched(small_model):
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    classes = ["a", "b", "c"]

    def run(precision: str) -> np.ndarray:
        with create_backend("torch", model=small_model, precision=precision) as backend:
            pred = Predictor(backend)
            pred.set_classes(classes)
            out = pred.predict(image)
            return out.probs

    before = run("fp32")
    half = run("fp16")
    assert not any(m._forward_pre_hooks for m in small_model.modules())  # the islands' hooks are gone
    np.testing.assert_array_equal(run("fp32"), before)
    assert 0 < np.abs(half - before).max() < 2e-2


def test_options_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="torch backend runs fp32, bf16, fp16"):
        create_backend("torch", backbone="sed_tiny_linear", precision="int8")
    with pytest.raises(ConfigError, match="--cuda-graphs needs --device cuda"):
        create_backend("torch", backbone="sed_tiny_linear", cuda_graphs=True)


def test_cer_rule_is_the_same_on_tensors_and_arrays_and_keeps_ties():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 30, 6, 6)).astype(np.float32)
    for k in (1, 3, 29):
        keep = cer_keep(torch.from_numpy(logits), torch.tensor([k - 1])).numpy()
        np.testing.assert_array_equal(np.flatnonzero(keep), topk_union(logits, k))
        # every class in a pixel's top-k by argsort is kept (the official union)
        official = np.unique(np.argsort(-logits, axis=1)[:, :k])
        np.testing.assert_array_equal(topk_union(logits, k), official)
    tied = np.zeros((1, 4, 2, 2), np.float32)
    tied[:, 0] = 1  # class 0 first everywhere, classes 1-3 tied second: top-2 keeps all of them
    assert topk_union(tied, 2).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(cer_keep(torch.from_numpy(tied), torch.tensor([1])).numpy()).tolist() == [0, 1, 2, 3]


def test_class_attention_is_an_fp32_island_under_fp16():
    """Summaries of a large vocabulary pass fp16's 65504; attend reads them in fp32 (they used to
    overflow to inf and give NaN under --precision fp16)."""
    from sed_trt.sed.modeling.fam import LinearAttention

    torch.manual_seed(0)
    attention = LinearAttention(32, num_heads=4)
    x = torch.randn(2, 5, 32)
    kv = torch.rand(2, 4, 8, 9) * 1e6 + 1e5  # (N, H, D, D + 1), sums over ~10^4 classes
    with torch.autocast("cpu", dtype=torch.float16):
        out = attention.attend(x, kv)
    reference = attention.attend(x, kv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parity
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
@pytest.mark.parametrize("topk", [None, 2])
def test_torch_on_cuda_reproduces_the_official_outputs_and_cuda_graphs_agree(parity_model, parity, parity_image, topk):
    """On a GPU (make gpu-check): fp32 eager gives the official outputs; --cuda-graphs gives the
    eager labels and kept sets on the first photo (captures) and the next (replays)."""
    import copy

    from tests.checks import check_official

    model = copy.deepcopy(parity_model)  # the backend moves it to the GPU
    with create_backend("torch", model=model, device="cuda") as backend:
        pred = Predictor(backend, topk=topk)
        pred.set_classes(parity["classes"])
        want = pred.predict(parity_image)
        check_official(want, parity, topk)
        want_probs, want_labels = want.probs, want.labels
    with create_backend("torch", model=model, device="cuda", cuda_graphs=True) as backend:
        pred = Predictor(backend, topk=topk)
        pred.set_classes(parity["classes"])
        for _ in range(2):
            out = pred.predict(parity_image)
            np.testing.assert_array_equal(out.labels, want_labels)
            np.testing.assert_array_equal(out.kept, want.kept)
            np.testing.assert_allclose(out.probs, want_probs, atol=1e-5)
