"""Traceable modules, one per exported graph, over :func:`sed_trt.sed.graphs.graph_outputs`.

torch.export needs a forward with named arguments; these classes only give the graph table
of ``sed.graphs`` the input names of :mod:`runtime.io_spec`. CER's data-dependent parts
(the survivors' ids, gathers) and the chunking over classes are in no graph: the runtime
does them between graphs (the ``cerK`` graphs give it a fixed-size keep mask).
"""

from __future__ import annotations

import torch
from torch import nn

from sed_trt.runtime.io_spec import (
    CER_GRAPHS,
    DECODER_STAGE0,
    FUSE_GRAPHS,
    IMAGE_ENCODER,
    LABELS,
    SUMMARY_GRAPHS,
    TEXT_ENCODER,
)
from sed_trt.sed.graphs import graph_outputs
from sed_trt.sed.modeling.sed import SED


class _GraphModule(nn.Module):
    def __init__(self, model: SED, graph: str, pooling: int = 1) -> None:
        super().__init__()
        self.model = model
        self.graph = graph
        self.pooling = pooling

    def _run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return graph_outputs(self.model, self.graph, inputs, pooling=self.pooling, channels_first=True)


class ImageEncoderExport(_GraphModule):
    """image (B, 3, H, W) raw RGB, padded, and each photo's canvas positions -> clip_dense,
    guidance_term1..3 (normalise + per-photo 768 resize inside)."""

    def forward(
        self,
        image: torch.Tensor,
        canvas_rows: torch.Tensor,
        canvas_row_weights: torch.Tensor,
        canvas_cols: torch.Tensor,
        canvas_col_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self._run(image, canvas_rows, canvas_row_weights, canvas_cols, canvas_col_weights)


class TextEncoderExport(_GraphModule):
    """tokens (Q, L) -> text_embeddings (Q, E)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens)[0]


class DecoderStage0Export(_GraphModule):
    """clip_dense (B, E, s, s), text_features (N, P, E) -> cost-map embedding, cg for stage 1, aux logits."""

    def forward(self, clip_dense: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(clip_dense, text_features)


class StageSummariesExport(_GraphModule):
    """Stage k features of a chunk and the running class-attention sums -> FAM spatial fusion
    and the sums with this chunk's share added."""

    def forward(self, features: torch.Tensor, class_kv_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(features, class_kv_in)


class StageFuseExport(_GraphModule):
    """The per-class rest of stage k on a chunk; stage 3 returns sigmoid probabilities."""

    def forward(
        self,
        spatial_features: torch.Tensor,
        class_kv: torch.Tensor,
        corr_guidance: torch.Tensor,
        guidance_term: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self._run(spatial_features, class_kv, corr_guidance, guidance_term)


class CerExport(_GraphModule):
    """aux_logits (B, T, s, s), rank (1,) = k - 1 -> keep (T,): CER's top-k union as a mask."""

    def forward(self, aux_logits: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        return self._run(aux_logits, rank)[0]


class LabelsExport(_GraphModule):
    """One band and class chunk of the label map (bilinear resize + running argmax)."""

    def forward(
        self,
        probs: torch.Tensor,
        class_ids: torch.Tensor,
        rows: torch.Tensor,
        row_weights: torch.Tensor,
        cols: torch.Tensor,
        col_weights: torch.Tensor,
        best_in: torch.Tensor,
        labels_in: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self._run(probs, class_ids, rows, row_weights, cols, col_weights, best_in, labels_in)


def wrapper_for(model: SED, graph: str, pooling: int) -> nn.Module:
    """The export module of a graph name from :mod:`runtime.io_spec`."""
    if graph == IMAGE_ENCODER:
        return ImageEncoderExport(model, graph)
    if graph == TEXT_ENCODER:
        return TextEncoderExport(model, graph)
    if graph == DECODER_STAGE0:
        return DecoderStage0Export(model, graph)
    if graph in SUMMARY_GRAPHS:
        return StageSummariesExport(model, graph, pooling)
    if graph in FUSE_GRAPHS:
        return StageFuseExport(model, graph, pooling)
    if graph in CER_GRAPHS:
        return CerExport(model, graph)
    if graph == LABELS:
        return LabelsExport(model, graph)
    raise KeyError(f"unknown graph {graph!r}")
