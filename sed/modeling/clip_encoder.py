"""HECG encoder: the hierarchical ConvNeXt CLIP image encoder and the frozen text encoder.

The image side is open_clip's ``TimmModel`` run densely: stem -> four stages (res2..res5)
-> the pooled-embedding head (LayerNorm over channels, then the CLIP projection)
applied at every location, giving ``clip_dense`` (B, E, H/32, W/32). This is what the
official vendored open_clip computes; upstream open_clip lacks only this forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sed_trt.sed.config import ClipConfig


@dataclass
class ImageFeatures:
    """Encoder outputs. res2..res5: (B, C_i, H/4..H/32); clip_dense: (B, E, H/32, W/32)."""

    res2: torch.Tensor
    res3: torch.Tensor
    res4: torch.Tensor
    res5: torch.Tensor
    clip_dense: torch.Tensor


def build_clip(cfg: ClipConfig) -> nn.Module:
    """Instantiate the open_clip CLIP described by ``cfg`` with random weights (no download)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from sed_trt.runtime.errors import ConfigError

    try:
        vision = CLIPVisionCfg(**cfg.vision_cfg)
        text = CLIPTextCfg(**cfg.text_cfg)
    except TypeError as exc:
        raise ConfigError(f"model config {cfg.name!r}: {exc}") from None
    return CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=cfg.quick_gelu)


def trunk_widths(clip: nn.Module) -> tuple[int, int, int, int]:
    """Channel widths of res2..res5."""
    stages = clip.visual.trunk.stages
    widths = []
    for stage in stages:
        last = stage.blocks[-1]
        widths.append(
            int(last.gamma.shape[0]) if getattr(last, "gamma", None) is not None else int(last.conv_dw.weight.shape[0])
        )
    return tuple(widths)  # type: ignore[return-value]


def encode_image_dense(visual: nn.Module, canvas: torch.Tensor) -> ImageFeatures:
    """Dense forward of the ConvNeXt CLIP image tower.

    Args:
        visual: open_clip ``TimmModel`` with a ConvNeXt trunk.
        canvas: normalised images (B, 3, H, W).
    """
    trunk = visual.trunk
    x = trunk.stem(canvas)
    feats = []
    for stage in trunk.stages:
        x = stage(x)
        feats.append(x)
    x = trunk.norm_pre(x)
    head = trunk.head
    assert isinstance(head.fc, nn.Identity), "SED expects the trunk classifier to be reset (num_classes=0)"
    # The pooled head is per-pixel at 1x1: LayerNorm over channels, then the CLIP projection.
    y = x.permute(0, 2, 3, 1)  # B C H W -> B H W C
    y = F.layer_norm(y, head.norm.normalized_shape, head.norm.weight, head.norm.bias, head.norm.eps)
    y = head.pre_logits(y) if hasattr(head, "pre_logits") else y
    y = visual.head(y)  # B H W C -> B H W E
    clip_dense = y.permute(0, 3, 1, 2)  # B H W E -> B E H W
    return ImageFeatures(res2=feats[0], res3=feats[1], res4=feats[2], res5=feats[3], clip_dense=clip_dense)


def encode_text_tokens(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP text embeddings (Q, E) of tokens (Q, L), L <= context length (Q and L dynamic).

    The transformer is causal and pools at the EOT token (the largest id), so tokens
    trimmed after the last EOT of the batch give the same embeddings as the full 77.
    """
    length = tokens.shape[1]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:length]  # Q L W
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    eot = tokens.argmax(dim=-1)  # Q
    x = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)  # Q L W -> Q W
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj
