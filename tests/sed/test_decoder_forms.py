"""The inference forms of the decoder blocks compute the official function (random weights)."""

from __future__ import annotations

import pytest
import torch

from sed_trt.sed.modeling.fam import ClassFusion, SpatialFusion


def _randomise(module: torch.nn.Module) -> None:
    """Random weights everywhere, norm affines and ConvNeXt's gamma included (folded by the forms)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.5 if p.dim() == 1 else 0.0, 0.2)


def test_spatial_fusion_channels_first_equals_official() -> None:
    m = SpatialFusion(32, kernel_size=9).eval()
    _randomise(m)
    x = torch.randn(3, 32, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_channels_first(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("pooling", [1, 2])
def test_class_fusion_split_equals_official(pooling: int, channels_first: bool) -> None:
    """Summaries over two chunks (3 + 2 classes), then the fuse of each chunk (eager and exported forms)."""
    m = ClassFusion(32, num_heads=4).eval()
    _randomise(m)
    x = torch.randn(1, 5, 32, 8, 6)
    with torch.no_grad():
        want = m(x, pooling)
        kv = m.summaries(x[:, :3], pooling) + m.summaries(x[:, 3:], pooling)
        chunks = (x[:, :3], x[:, 3:])
        got = torch.cat([m.fuse(c, kv, pooling, channels_first=channels_first) for c in chunks], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
