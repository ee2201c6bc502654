"""CER: category early rejection between decoder stages (the rule: runtime.cer)."""

from __future__ import annotations

import torch

from sed_trt.runtime.cer import MAX_CER_TOPK, keeps_all


def cer_keep(aux_logits: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """sed_trt.runtime.cer's rule: (T,) 1.0 for the classes whose logit reaches the per-pixel k-th
    largest (``rank`` (1,) int64 = k - 1) at some pixel of some image of (B, T, s, s).

    The largest ``min(T, MAX_CER_TOPK)`` per pixel (TopK with a K bounded by a constant: TensorRT
    caps K at 3840, so a K = T sort would fail for large vocabularies; also far less work than a
    full sort) and a gather at a run-time rank, so one exported graph serves every k up to
    MAX_CER_TOPK.
    """
    ordered = aux_logits.topk(min(aux_logits.shape[1], MAX_CER_TOPK), dim=1).values  # B K s s, descending
    kth = ordered.index_select(1, rank)  # B 1 s s
    return (aux_logits >= kth).float().amax(dim=(0, 2, 3))  # T


def select_categories(logits: torch.Tensor, topk: int | None) -> torch.Tensor:
    """Sorted int64 indices (T',) of the classes CER keeps from auxiliary logits (B, T, H, W)."""
    if keeps_all(topk, logits.shape[1]):
        return torch.arange(logits.shape[1], device=logits.device)
    assert topk is not None
    rank = torch.tensor([topk - 1], device=logits.device)
    return cer_keep(logits, rank).nonzero().squeeze(1)
