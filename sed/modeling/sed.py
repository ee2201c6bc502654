"""SED: HECG encoder -> cost map -> gradual fusion decoder with CER.

State-dict keys are ``clip_model.*`` and ``transformer.*``: the official checkpoint's
``sem_seg_head.predictor.`` prefix removed (see :mod:`sed.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sed_trt.runtime.image import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from sed_trt.runtime.io_spec import ModelDims, StageOutput
from sed_trt.sed.config import SEDConfig
from sed_trt.sed.modeling.cer import select_categories
from sed_trt.sed.modeling.clip_encoder import ImageFeatures, encode_image_dense, encode_text_tokens
from sed_trt.sed.modeling.cost_map import cost_map
from sed_trt.sed.modeling.decoder import GradualFusionDecoder


@dataclass
class EncodedImage:
    """Image-only inputs of the decoder: clip_dense (B, E, s, s) and guidance of stages 1..3."""

    clip_dense: torch.Tensor
    guidance: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    features: ImageFeatures | None = None


@dataclass
class SEDOutput:
    """probs (B, T, 8s, 8s): sigmoid probabilities, exact zeros for rejected classes;
    logits: final logits of the kept classes (B, T', 8s, 8s); kept: (T,) bool."""

    probs: torch.Tensor
    logits: torch.Tensor
    kept: torch.Tensor


@dataclass
class TrainLogits:
    """Logits of a training forward, each (B, T, h, w): the final head and the auxiliary heads
    after the cost-map embedding (stage 0) and decoder stages 1 and 2."""

    final: torch.Tensor
    aux: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    def in_loss_order(self) -> tuple[torch.Tensor, ...]:
        """(final, aux0, aux1, aux2): the official ``loss_sem_seg_0..3`` order."""
        return (self.final, *self.aux)


def resize_each(
    x: torch.Tensor, rows: torch.Tensor, row_weights: torch.Tensor, cols: torch.Tensor, col_weights: torch.Tensor
) -> torch.Tensor:
    """Bilinear resize of each image of a padded batch, at per-image source positions.

    ``F.interpolate``'s arithmetic (weights of the two neighbours, then rows of columns), with
    gathers, so one graph resizes photos of different sizes; the positions come from the
    host (runtime.image.canvas_positions: torch's, exactly).

    Args:
        x: (B, C, H, W) images, padded to the largest.
        rows, cols: (B, 2, S) the upper and lower source row (column) of every output row (column).
        row_weights, col_weights: (B, S) the weight of the lower (right) neighbour.

    Returns:
        (B, C, S, S).
    """
    b, c, _, w = x.shape
    s = rows.shape[-1]
    top = x.gather(2, rows[:, 0, None, :, None].expand(b, c, s, w))  # B C S W
    bottom = x.gather(2, rows[:, 1, None, :, None].expand(b, c, s, w))
    c0 = cols[:, 0, None, None, :].expand(b, c, s, s)  # B C S S
    c1 = cols[:, 1, None, None, :].expand(b, c, s, s)
    b1, a1 = col_weights[:, None, None, :], row_weights[:, None, :, None]  # B 1 1 S, B 1 S 1
    b0, a0 = 1 - b1, 1 - a1
    return a0 * (b0 * top.gather(3, c0) + b1 * top.gather(3, c1)) + a1 * (
        b0 * bottom.gather(3, c0) + b1 * bottom.gather(3, c1)
    )


class SED(nn.Module):
    """A Simple Encoder-Decoder for open-vocabulary semantic segmentation."""

    def __init__(self, cfg: SEDConfig, *, clip_model: nn.Module, decoder: GradualFusionDecoder) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip_model = clip_model
        self.transformer = decoder
        self.register_buffer("pixel_mean", torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def io_dims(self) -> ModelDims:
        """The static sizes of this model's graphs (the I/O contract of runtime.io_spec)."""
        return ModelDims.from_config(self.cfg)

    # --- HECG encoder ---------------------------------------------------------------
    def to_canvas(self, image: torch.Tensor, positions: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Raw RGB 0-255 (B, 3, H, W) -> normalised (B, 3, 768, 768); aspect ratio not kept (official).

        ``positions`` (rows, row weights, columns, column weights; see :func:`resize_each`): a
        padded batch of photos of different sizes, each resized on its own as ``F.interpolate``.
        """
        x = (image - self.pixel_mean) / self.pixel_std
        size = self.cfg.image_size
        if positions is None:
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return resize_each(x, *positions)

    @property
    def visual(self) -> nn.Module:
        """The CLIP image tower (open_clip's ``visual``)."""
        return cast(nn.Module, self.clip_model.visual)

    def encode_image(
        self, image: torch.Tensor, *, positions: Sequence[torch.Tensor] | None = None, keep_features: bool = False
    ) -> EncodedImage:
        """Raw RGB image (B, 3, H, W), H and W dynamic (``positions``: see :meth:`to_canvas`) ->
        dense CLIP embedding and decoder guidance."""
        return self.encode_canvas(self.to_canvas(image, positions), keep_features=keep_features)

    def encode_canvas(self, canvas: torch.Tensor, *, keep_features: bool = False) -> EncodedImage:
        """A normalised canvas (B, 3, S, S) (see :meth:`to_canvas`) -> dense CLIP embedding and guidance."""
        feats = encode_image_dense(self.visual, canvas)
        guidance = self.transformer.project_guidance(feats.res4, feats.res3, feats.res2)
        return EncodedImage(clip_dense=feats.clip_dense, guidance=guidance, features=feats if keep_features else None)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (Q, L) -> text embeddings (Q, E), not normalised."""
        return encode_text_tokens(self.clip_model, tokens)

    # --- decoder -------------------------------------------------------------------
    def decode_stage0(self, clip_dense: torch.Tensor, text_features: torch.Tensor) -> StageOutput:
        """Cost map of (B, E, s, s) with (T, P, E), then its embedding (stage 0)."""
        return self.transformer.embed_cost_map(cost_map(clip_dense, text_features))

    def decode_stage(
        self, k: int, features: torch.Tensor, *, corr_guidance: torch.Tensor, guidance: torch.Tensor, pooling: int = 1
    ) -> StageOutput:
        """Decoder stage k in 1..3 (see :meth:`GradualFusionDecoder.stage`)."""
        return self.transformer.stage(k, features, corr_guidance=corr_guidance, guidance=guidance, pooling=pooling)

    @torch.no_grad()
    def forward(
        self, image: torch.Tensor, text_features: torch.Tensor, *, topk: int | None = None, pooling: int = 1
    ) -> SEDOutput:
        """Inference: raw image (B, 3, H, W) and text features (T, P, E) -> SEDOutput.

        With ``topk`` set, CER keeps at each of the three rejection points the classes in
        the per-pixel top-k of the auxiliary logits (union over pixels and batch).
        """
        enc = self.encode_image(image)
        out = self.decode_stage0(enc.clip_dense, text_features)
        kept = torch.arange(text_features.shape[0], device=image.device)
        for k in (1, 2, 3):
            # Run CER: reject classes absent from every pixel's top-k
            sel = select_categories(out.aux_logits, topk)
            kept = kept[sel]
            assert out.corr_guidance is not None
            out = self.decode_stage(
                k,
                out.features[:, sel],
                corr_guidance=out.corr_guidance[:, sel],
                guidance=enc.guidance[k - 1],
                pooling=pooling,
            )
        b, _, h, w = out.aux_logits.shape
        probs = image.new_zeros(b, text_features.shape[0], h, w)
        probs[:, kept] = out.aux_logits.sigmoid()
        mask = torch.zeros(text_features.shape[0], dtype=torch.bool, device=image.device)
        mask[kept] = True
        return SEDOutput(probs=probs, logits=out.aux_logits, kept=mask)

    def forward_train(
        self, image: torch.Tensor, text_features: torch.Tensor, *, pooling: int | None = None
    ) -> TrainLogits:
        """Training forward (no CER): final logits and the three auxiliary logits, each (B, T, h, w).

        As in the official code, the auxiliary heads see detached features and the
        skip features res2..res4 are detached, so the encoder learns only through the cost map.
        """
        pooling = self.cfg.decoder.train_pooling if pooling is None else pooling
        feats = encode_image_dense(self.visual, self.to_canvas(image))
        guidance = self.transformer.project_guidance(feats.res4.detach(), feats.res3.detach(), feats.res2.detach())
        out = self.transformer.embed_cost_map(cost_map(feats.clip_dense, text_features), detach_aux=True)
        aux = [out.aux_logits]
        for k in (1, 2, 3):
            assert out.corr_guidance is not None
            out = self.transformer.stage(
                k,
                out.features,
                corr_guidance=out.corr_guidance,
                guidance=guidance[k - 1],
                pooling=pooling,
                detach_aux=True,
            )
            aux.append(out.aux_logits)
        return TrainLogits(final=aux[3], aux=(aux[0], aux[1], aux[2]))
