"""Post-processing in torch, as the official ``sem_seg_postprocess`` + argmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labels_from_probs_torch(probs: torch.Tensor, out_hw: tuple[int, int], chunk: int = 32) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (T, h, w) probabilities to (H0, W0), argmax over T.

    Classes are resized in chunks with a running maximum, so 847 classes at full
    resolution never need a (T, H0, W0) tensor.
    """
    best = torch.full(out_hw, -float("inf"), dtype=probs.dtype, device=probs.device)
    labels = torch.zeros(out_hw, dtype=torch.int64, device=probs.device)
    for start in range(0, probs.shape[0], chunk):
        resized = F.interpolate(probs[None, start : start + chunk], size=out_hw, mode="bilinear", align_corners=False)[
            0
        ]
        val, arg = resized.max(dim=0)
        better = val > best
        best = torch.where(better, val, best)
        labels = torch.where(better, arg + start, labels)
    return labels
