"""Pixel-level image-text cost map (HECG): cosine similarity, no temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sed_trt.sed.modeling.precision import fp32_island


def cost_map(clip_dense: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel embedding with every (class, template) text embedding.

    Args:
        clip_dense: dense CLIP image embeddings (B, E, H, W).
        text_features: (T, P, E); T is dynamic.

    Returns:
        (B, T, P, H, W) similarities in [-1, 1]. (The official layout is (B, P, T, H, W);
        the decoder consumes it as (B T) P H W, which this layout gives without a permute.)
    """
    with fp32_island(clip_dense):  # the norms in fp32; the products in the autocast precision
        img = F.normalize(clip_dense.float(), dim=1)
        txt = F.normalize(text_features.float(), dim=-1)
    b, e, h, w = img.shape
    t, p, _ = txt.shape
    corr = txt.reshape(t * p, e) @ img.reshape(b, e, h * w)  # (T P) E @ B E (H W) -> B (T P) (H W)
    return corr.reshape(b, t, p, h, w)  # B (T P) (H W) -> B T P H W
