"""Gradual fusion decoder: cost-map embedding, three FAM+SFM stages, CER auxiliary heads.

Module attribute names are the official ones (``conv1``, ``decoder_guidance_projection``,
``decoder_corr_guidance_projection``, ``decoder1..3``, ``head0..2``, ``head``). The per-class
tensors are laid out (B, T, C, H, W) at every stage boundary so that CER can select
classes on axis 1 for any batch size.

Two forms of each stage compute the same function. :meth:`GradualFusionDecoder.stage` is the
official one (training, the reference forward). Inference splits it where classes mix: the
only class-mixing step, FAM's class-level linear attention, needs just two per-position sums
over classes (:meth:`GradualFusionDecoder.stage_summaries`, which also runs FAM's spatial
fusion); everything else (:meth:`GradualFusionDecoder.stage_fuse`: attention with those sums,
upsampling, SFM, heads) is per class. Both run on any chunk of classes, so the runtime never
holds a stage's high-resolution activations for the whole vocabulary; SFM's encoder-guidance
term is computed once per image (:meth:`GradualFusionDecoder.guidance_terms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from sed_trt.runtime.io_spec import StageOutput
from sed_trt.sed.config import DecoderConfig
from sed_trt.sed.modeling.fam import ClassFusion, SpatialFusion
from sed_trt.sed.modeling.precision import fp32_island
from sed_trt.sed.modeling.sfm import DoubleConv, skip_fuse


@dataclass
class StageSummaries:
    """FAM's spatial fusion of a chunk of classes and their class-attention sums.

    spatial: (B, T', C, H, W) after spatial fusion; kv: (B, P, H', D, D + 1), the class-attention
    sums over the chunk's classes (they add over chunks; see ``LinearAttention.summaries``),
    P pooled positions, H' heads.
    """

    spatial: torch.Tensor
    kv: torch.Tensor


class DecoderStage(nn.Module):
    """One gradual-fusion stage (official ``Up``): FAM (spatial, then class-level), then SFM."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        guidance_dim: int,
        corr_guidance_dim: int,
        kernel_size: int = 9,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        self.cnext = SpatialFusion(in_dim, kernel_size=kernel_size)
        self.attention = ClassFusion(in_dim, num_heads=num_heads)
        self.up = nn.ConvTranspose2d(in_dim, in_dim - guidance_dim, 2, stride=2)
        self.conv = DoubleConv(in_dim - guidance_dim + guidance_dim + corr_guidance_dim, out_dim)

    def forward(
        self, x: torch.Tensor, *, corr_guidance: torch.Tensor, guidance: torch.Tensor, pooling: int = 1
    ) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T, out, 2H, 2W)."""
        b, t, c, h, w = x.shape
        y = self.cnext(x.reshape(b * t, c, h, w))  # B T C H W -> (B T) C H W
        y = self.attention(y.reshape(b, t, c, h, w), pooling)  # (B T) C H W -> B T C H W
        y = self.up(y.reshape(b * t, c, h, w))  # (B T) C' 2H 2W
        y = self.conv(skip_fuse(y.reshape(b, t, *y.shape[1:]), guidance, corr_guidance))
        return y.reshape(b, t, *y.shape[1:])  # (B T) out 2H 2W -> B T out 2H 2W

    def summaries(self, x: torch.Tensor, *, pooling: int = 1, channels_first: bool = False) -> StageSummaries:
        """FAM spatial fusion of (B, T', C, H, W) and the class-attention sums over those T' classes.

        ``channels_first``: FAM's spatial block in the exported graphs' form
        (:meth:`SpatialFusion.forward_channels_first`).
        """
        b, t, c, h, w = x.shape
        cnext = self.cnext.forward_channels_first if channels_first else self.cnext
        y = cnext(x.reshape(b * t, c, h, w))  # B T C H W -> (B T) C H W
        y = y.reshape(b, t, c, h, w)  # (B T) C H W -> B T C H W
        return StageSummaries(spatial=y, kv=self.attention.summaries(y, pooling))

    def guidance_term(self, guidance: torch.Tensor) -> torch.Tensor:
        """SFM's first-conv response to the encoder guidance (B, G, 2H, 2W) -> (B, out, 2H, 2W)."""
        return self.conv.guidance_term(guidance, first=self.up.out_channels)

    def fuse(
        self,
        spatial: torch.Tensor,
        *,
        kv: torch.Tensor,
        corr_guidance: torch.Tensor,
        guidance_term: torch.Tensor,
        pooling: int = 1,
        channels_first: bool = False,
    ) -> torch.Tensor:
        """The rest of :meth:`forward` for a chunk (B, T', C, H, W) of :meth:`summaries`' output -> (B, T', out, 2H, 2W)."""
        b, t, c, h, w = spatial.shape
        y = self.attention.fuse(spatial, kv, pooling, channels_first=channels_first)
        y = self.up(y.reshape(b * t, c, h, w))  # (B T) C' 2H 2W
        y = self.conv.forward_split(y.reshape(b, t, *y.shape[1:]), corr_guidance, guidance_term)
        return y.reshape(b, t, *y.shape[1:])  # (B T) out 2H 2W -> B T out 2H 2W


def _per_class_conv(conv: nn.Module, x: torch.Tensor, *, fp32: bool = False) -> torch.Tensor:
    """Apply a per-class module to (B, T, C, H, W) by folding T into the batch (``fp32``: an
    fp32 island under reduced precision, see :mod:`sed_trt.sed.modeling.precision`)."""
    b, t = x.shape[:2]
    x = x.reshape(b * t, *x.shape[2:])  # B T C H W -> (B T) C H W
    if fp32:
        with fp32_island(x):
            y = conv(x.float())
    else:
        y = conv(x)
    return y.reshape(b, t, *y.shape[1:])  # (B T) C' H' W' -> B T C' H' W'


class GradualFusionDecoder(nn.Module):
    """The decoder of SED (official ``Aggregator``), exposed stage by stage."""

    def __init__(self, cfg: DecoderConfig, *, encoder_dims: tuple[int, int, int]) -> None:
        """encoder_dims: channels of res4, res3, res2 (the guidance inputs of stages 1..3)."""
        super().__init__()
        hidden = cfg.hidden_dim
        p = cfg.num_templates
        self.conv1 = nn.Conv2d(p, hidden, kernel_size=7, stride=1, padding=3)
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, dp, kernel_size=3, stride=1, padding=1), nn.ReLU())
            for d, dp in zip(encoder_dims, cfg.guidance_proj_dims)
        )
        corr_in = (p, *cfg.corr_guidance_dims[:-1])
        self.decoder_corr_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(d, dp, kernel_size=2, stride=2), nn.ReLU())
            for d, dp in zip(corr_in, cfg.corr_guidance_dims)
        )
        dims = (hidden, *cfg.decoder_dims)
        for k in range(3):
            stage = DecoderStage(
                dims[k],
                dims[k + 1],
                guidance_dim=cfg.guidance_proj_dims[k],
                corr_guidance_dim=cfg.corr_guidance_dims[k],
                kernel_size=cfg.kernel_size,
                num_heads=cfg.num_heads,
            )
            self.add_module(f"decoder{k + 1}", stage)
        self.head0 = nn.Conv2d(hidden, 1, kernel_size=3, stride=1, padding=1)
        self.head1 = nn.Conv2d(dims[1], 1, kernel_size=3, stride=1, padding=1)
        self.head2 = nn.Conv2d(dims[2], 1, kernel_size=3, stride=1, padding=1)
        self.head = nn.Conv2d(dims[3], 1, kernel_size=3, stride=1, padding=1)

    @property
    def stages(self) -> tuple[DecoderStage, DecoderStage, DecoderStage]:
        return cast(tuple[DecoderStage, DecoderStage, DecoderStage], (self.decoder1, self.decoder2, self.decoder3))

    @property
    def heads(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        """Heads applied after stage 0..3 (head0..2 are the CER auxiliary heads)."""
        return (self.head0, self.head1, self.head2, self.head)

    def project_guidance(
        self, res4: torch.Tensor, res3: torch.Tensor, res2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder guidance of stages 1..3: (B, 32, 2s, 2s), (B, 16, 4s, 4s), (B, 8, 8s, 8s)."""
        proj = self.decoder_guidance_projection
        return proj[0](res4), proj[1](res3), proj[2](res2)

    def guidance_terms(
        self, guidance: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image SFM terms of stages 1..3 from :meth:`project_guidance`'s output: (B, out_k, 2s_k, 2s_k)."""
        s1, s2, s3 = self.stages
        return s1.guidance_term(guidance[0]), s2.guidance_term(guidance[1]), s3.guidance_term(guidance[2])

    def embed_cost_map(self, cost: torch.Tensor, *, detach_aux: bool = False) -> StageOutput:
        """Stage 0: cost map (B, T, P, s, s) -> embedding (B, T, 128, s, s), cg for stage 1, aux logits."""
        x = _per_class_conv(self.conv1, cost)
        cg = _per_class_conv(self.decoder_corr_guidance_projection[0], cost)
        aux = _per_class_conv(self.head0, x.detach() if detach_aux else x, fp32=True)
        return StageOutput(features=x, corr_guidance=cg, aux_logits=aux.squeeze(2))

    def stage(
        self,
        k: int,
        features: torch.Tensor,
        *,
        corr_guidance: torch.Tensor,
        guidance: torch.Tensor,
        pooling: int = 1,
        detach_aux: bool = False,
    ) -> StageOutput:
        """Decoder stage k in 1..3 on the classes present in ``features`` (T dynamic).

        Args:
            features: (B, T, C_k, s_k, s_k).
            corr_guidance: cost-map guidance (B, T, Gc_k, 2s_k, 2s_k).
            guidance: encoder guidance (B, G_k, 2s_k, 2s_k).
            pooling: class-attention pooling (1 at evaluation, 2 in training).

        Returns:
            features (B, T, C_{k+1}, 2s_k, 2s_k), cost-map guidance for stage k+1 (computed
            per class from ``corr_guidance``; None for k = 3) and the head's logits.
        """
        x = self.stages[k - 1](features, corr_guidance=corr_guidance, guidance=guidance, pooling=pooling)
        cg = _per_class_conv(self.decoder_corr_guidance_projection[k], corr_guidance) if k < 3 else None
        aux = _per_class_conv(self.heads[k], x.detach() if detach_aux and k < 3 else x, fp32=True)
        return StageOutput(features=x, corr_guidance=cg, aux_logits=aux.squeeze(2))

    def stage_summaries(
        self, k: int, features: torch.Tensor, *, pooling: int = 1, channels_first: bool = False
    ) -> StageSummaries:
        """First half of inference stage k (1..3) on a chunk of classes (B, T', C_k, s_k, s_k).

        ``channels_first``: the exported graphs' form of FAM's per-position layers (1x1
        convolutions; faster in ONNX Runtime, slower in PyTorch eager); the same function.
        """
        return self.stages[k - 1].summaries(features, pooling=pooling, channels_first=channels_first)

    def stage_fuse(
        self,
        k: int,
        spatial: torch.Tensor,
        *,
        kv: torch.Tensor,
        corr_guidance: torch.Tensor,
        guidance_term: torch.Tensor,
        pooling: int = 1,
        channels_first: bool = False,
    ) -> StageOutput:
        """Second half of inference stage k on a chunk: equals :meth:`stage` up to float rounding when
        ``kv`` is summed over every class the stage sees (``channels_first`` as in :meth:`stage_summaries`).

        Args:
            spatial: :meth:`stage_summaries`' spatial output for the chunk (B, T', C_k, s_k, s_k).
            kv: class-attention sums over all the stage's classes.
            corr_guidance: cost-map guidance of the chunk (B, T', Gc_k, 2s_k, 2s_k).
            guidance_term: :meth:`guidance_terms`' k-th term (B, C_{k+1}, 2s_k, 2s_k).
        """
        x = self.stages[k - 1].fuse(
            spatial,
            kv=kv,
            corr_guidance=corr_guidance,
            guidance_term=guidance_term,
            pooling=pooling,
            channels_first=channels_first,
        )
        cg = _per_class_conv(self.decoder_corr_guidance_projection[k], corr_guidance) if k < 3 else None
        aux = _per_class_conv(self.heads[k], x, fp32=True)
        return StageOutput(features=x, corr_guidance=cg, aux_logits=aux.squeeze(2))
