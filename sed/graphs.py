"""What each graph of :mod:`runtime.io_spec` computes, on the PyTorch model.

The one home of the graph table: the export wrappers trace these functions and the torch
backend runs them, so the exported graphs and the reference cannot drift apart (stage 3
returns sigmoid probabilities in both). Inputs and outputs are in the spec's order. The
decoder graphs are the split inference form of each stage (see :mod:`sed_trt.sed.modeling.decoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sed_trt.runtime.io_spec import (
    CER_GRAPHS,
    DECODER_STAGE0,
    FUSE_GRAPHS,
    IMAGE_ENCODER,
    LABELS,
    SUMMARY_GRAPHS,
    TEXT_ENCODER,
)
from sed_trt.sed.modeling.cer import cer_keep
from sed_trt.sed.modeling.sed import SED


def band_labels(
    probs: torch.Tensor,
    class_ids: torch.Tensor,
    rows: torch.Tensor,
    row_weights: torch.Tensor,
    cols: torch.Tensor,
    col_weights: torch.Tensor,
    best_in: torch.Tensor,
    labels_in: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One band of the label map for one chunk of classes: bilinear resize + running argmax.

    Args:
        probs: (1, N, h, w) probabilities of N classes.
        class_ids: (N,) int32 label of each class (its id in the vocabulary).
        rows, row_weights: (R,) per output row its upper source row and that row's lower
            neighbour's weight (runtime.image.source_positions); cols, col_weights: (X,).
        best_in, labels_in: (R, X) the best value and label over the classes before this chunk
            (-1 and anything for the first chunk).

    Returns:
        (R, X) best value and label so far. Values are computed as torch's bilinear
        (align_corners=False) computes them, and ties keep the lower class, as argmax does
        (chunks run in class order, so a later chunk must be strictly better).
    """
    h, w = probs.shape[-2:]
    p = probs[0]
    top, bottom = p.index_select(1, rows), p.index_select(1, (rows + 1).clamp(max=h - 1))  # N R w
    c0, c1 = cols, (cols + 1).clamp(max=w - 1)
    b1 = col_weights
    b0 = 1 - b1
    a1 = row_weights[:, None]  # R 1
    a0 = 1 - a1
    value = a0 * (b0 * top.index_select(2, c0) + b1 * top.index_select(2, c1)) + a1 * (
        b0 * bottom.index_select(2, c0) + b1 * bottom.index_select(2, c1)
    )  # N R X
    best, index = value.max(dim=0)  # R X, the first of equal maxima
    better = best > best_in
    return torch.where(better, best, best_in), torch.where(better, class_ids[index], labels_in)


def encode_canvas(model: SED, canvas: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The image encoder graph after the resize: canvas (B, 3, S, S) -> clip_dense and the guidance
    terms (the torch backend's CUDA graphs capture this part once per batch size, whatever the photo's size)."""
    enc = model.encode_canvas(canvas)
    return (enc.clip_dense, *model.transformer.guidance_terms(enc.guidance))


def graph_outputs(
    model: SED, graph: str, inputs: Sequence[torch.Tensor], *, pooling: int, channels_first: bool = False
) -> tuple[torch.Tensor, ...]:
    """Run ``graph`` of the I/O spec on ``model``: ``inputs`` and the result in the spec's order.

    ``channels_first`` selects the exported form of FAM's per-position layers (1x1
    convolutions, fast in ONNX Runtime and TensorRT; the export sets it); PyTorch eager runs
    the channels-last form faster. The same function either way, up to float rounding.
    """
    if graph in CER_GRAPHS:
        aux_logits, rank = inputs
        return (cer_keep(aux_logits, rank),)
    if graph == LABELS:
        return band_labels(*inputs[:8])
    dec = model.transformer
    if graph == IMAGE_ENCODER:
        image, *positions = inputs
        return encode_canvas(model, model.to_canvas(image, positions))
    if graph == TEXT_ENCODER:
        (tokens,) = inputs
        return (model.encode_text(tokens),)
    if graph == DECODER_STAGE0:
        clip_dense, text_features = inputs
        out = model.decode_stage0(clip_dense, text_features)
        assert out.corr_guidance is not None
        return out.features, out.corr_guidance, out.aux_logits
    if graph in SUMMARY_GRAPHS:
        features, kv_in = inputs
        s = dec.stage_summaries(
            SUMMARY_GRAPHS.index(graph) + 1, features, pooling=pooling, channels_first=channels_first
        )
        return s.spatial, kv_in + s.kv.float()  # a running sum over chunks (RUNNING_SUMS), in fp32
    if graph not in FUSE_GRAPHS:
        raise KeyError(f"unknown graph {graph!r}")
    k = FUSE_GRAPHS.index(graph) + 1
    spatial, kv, corr_guidance, guidance_term = inputs
    out = dec.stage_fuse(
        k,
        spatial,
        kv=kv,
        corr_guidance=corr_guidance,
        guidance_term=guidance_term,
        pooling=pooling,
        channels_first=channels_first,
    )
    if k == 3:
        return (out.aux_logits.sigmoid(),)
    assert out.corr_guidance is not None
    return out.features, out.corr_guidance, out.aux_logits
