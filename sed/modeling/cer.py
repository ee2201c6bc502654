"""CER: category early rejection between decoder stages, for the torch model (rule: runtime.cer)."""

from __future__ import annotations

import torch

from runtime.backends.torch_ops import torch_topk_union
from runtime.cer import keeps_all


def select_categories(logits: torch.Tensor, topk: int | None) -> torch.Tensor:
    """Sorted int64 indices (T',) of the classes CER keeps from auxiliary logits (B, T, H, W)."""
    if keeps_all(topk, logits.shape[1]):
        return torch.arange(logits.shape[1], device=logits.device)
    assert topk is not None
    return torch_topk_union(logits, topk)
