"""CER: category early rejection between decoder stages (reference, torch)."""

from __future__ import annotations

import torch


def select_categories(logits: torch.Tensor, topk: int | None) -> torch.Tensor:
    """Classes in the per-pixel top-k of any pixel of any image (the official rule).

    Args:
        logits: auxiliary logits (B, T, H, W).
        topk: k; None keeps every class.

    Returns:
        Sorted int64 indices (T',) into the T axis; the union spans pixels and the batch.
    """
    t = logits.shape[1]
    if topk is None or topk >= t:
        return torch.arange(t, device=logits.device)
    top = logits.topk(topk, dim=1).indices  # B K H W
    keep = torch.zeros(t, dtype=torch.bool, device=logits.device)
    keep[top.flatten()] = True
    return keep.nonzero().squeeze(1)
