"""SFM: skip-layer fusion of per-class features with encoder and cost-map guidance."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Module):
    """(Conv3x3 no bias -> GroupNorm(out/16) -> ReLU) x 2; official key ``double_conv``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        groups = max(out_dim // 16, 1)
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_dim),
            nn.ReLU(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_dim),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


def skip_fuse(up: torch.Tensor, guidance: torch.Tensor, corr_guidance: torch.Tensor) -> torch.Tensor:
    """Concatenate [up(x), encoder guidance repeated over T, cost-map guidance] on channels.

    Args:
        up: upsampled per-class features (B, T, C', H, W).
        guidance: encoder guidance of the image (B, G, H, W), shared by every class.
        corr_guidance: per-class cost-map guidance (B, T, Gc, H, W).

    Returns:
        ((B T), C' + G + Gc, H, W), b-major like the official repeat.
    """
    b, t = up.shape[:2]
    g = guidance.unsqueeze(1).expand(-1, t, -1, -1, -1)  # B G H W -> B T G H W
    x = torch.cat([up, g, corr_guidance], dim=2)
    return x.reshape(b * t, *x.shape[2:])  # B T C H W -> (B T) C H W
