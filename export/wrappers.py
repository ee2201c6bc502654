"""Thin traceable modules, one per exported graph, over the model's own stage methods.

Each wrapper only maps the I/O contract of :mod:`runtime.io_spec` onto a public method of
:class:`sed.SED`. CER's data-dependent parts (top-k union, boolean gather, scatter into
zeros) are not in any graph: the engine split at the three rejection points replaces
them, and the runtime does them between graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.io_spec import DECODER_STAGES, IMAGE_ENCODER, TEXT_ENCODER
from sed.modeling.sed import SED


class ImageEncoderExport(nn.Module):
    """image (B, 3, H, W) raw RGB -> clip_dense, guidance1..3 (normalise + 768 resize inside)."""

    def __init__(self, model: SED) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.model.encode_image(image)
        return (enc.clip_dense, *enc.guidance)


class TextEncoderExport(nn.Module):
    """tokens (Q, L) -> text_embeddings (Q, E)."""

    def __init__(self, model: SED) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class DecoderStage0Export(nn.Module):
    """clip_dense (B, E, s, s), text_features (T, P, E) -> cost-map embedding, cg for stage 1, aux logits."""

    def __init__(self, model: SED) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip_dense: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.decode_stage0(clip_dense, text_features)
        return out.features, out.corr_guidance, out.aux_logits


class DecoderStageExport(nn.Module):
    """Decoder stage k (1..3) over the T classes fed in; stage 3 returns sigmoid probabilities."""

    def __init__(self, model: SED, k: int, pooling: int) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self.pooling = pooling

    def forward(self, features: torch.Tensor, corr_guidance: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.decode_stage(self.k, features, corr_guidance, guidance, self.pooling)
        if self.k == 3:
            return (out.aux_logits.sigmoid(),)
        return out.features, out.corr_guidance, out.aux_logits


def wrapper_for(model: SED, graph: str, pooling: int) -> nn.Module:
    """The export module of a graph name from :mod:`runtime.io_spec`."""
    if graph == IMAGE_ENCODER:
        return ImageEncoderExport(model)
    if graph == TEXT_ENCODER:
        return TextEncoderExport(model)
    if graph == DECODER_STAGES[0]:
        return DecoderStage0Export(model)
    if graph in DECODER_STAGES:
        return DecoderStageExport(model, DECODER_STAGES.index(graph), pooling)
    raise KeyError(f"unknown graph {graph!r}")
