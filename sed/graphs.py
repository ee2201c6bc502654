"""What each graph of :mod:`runtime.io_spec` computes, on the PyTorch model.

The one home of the graph table: the export wrappers trace these functions and the torch
backend runs them, so the exported graphs and the reference cannot drift apart (stage 3
returns sigmoid probabilities in both). Inputs and outputs are in the spec's order. The
decoder graphs are the split inference form of each stage (see :mod:`sed.modeling.decoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from runtime.io_spec import DECODER_STAGE0, FUSE_GRAPHS, IMAGE_ENCODER, SUMMARY_GRAPHS, TEXT_ENCODER
from sed.modeling.sed import SED


def graph_outputs(
    model: SED, graph: str, inputs: Sequence[torch.Tensor], *, pooling: int, channels_first: bool = False
) -> tuple[torch.Tensor, ...]:
    """Run ``graph`` of the I/O spec on ``model``: ``inputs`` and the result in the spec's order.

    ``channels_first`` selects the exported form of FAM's per-position layers (1x1
    convolutions, fast in ONNX Runtime and TensorRT; the export sets it); PyTorch eager runs
    the channels-last form faster. The same function either way, up to float rounding.
    """
    dec = model.transformer
    if graph == IMAGE_ENCODER:
        (image,) = inputs
        enc = model.encode_image(image)
        return (enc.clip_dense, *dec.guidance_terms(enc.guidance))
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
        return s.spatial, kv_in + s.kv  # a running sum over chunks (runtime.io_spec.RUNNING_SUMS)
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
