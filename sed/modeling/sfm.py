"""SFM: skip-layer fusion of per-class features with encoder and cost-map guidance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    def _first_weight(self) -> torch.Tensor:
        conv = self.double_conv[0]
        assert isinstance(conv, nn.Conv2d)
        return conv.weight

    def guidance_term(self, guidance: torch.Tensor, *, first: int) -> torch.Tensor:
        """The first conv's response to the encoder guidance alone: (B, G, H, W) -> (B, out, H, W).

        ``first`` is the guidance's first input channel (after the upsampled features). The
        conv is linear, bias-free and zero-padded, so conv([u, g, c]) = conv_u(u) + conv_g(g) +
        conv_c(c): the guidance part is computed once per image instead of once per class.
        """
        weight = self._first_weight()  # out (C' G Gc) 3 3
        return F.conv2d(guidance, weight[:, first : first + guidance.shape[1]], padding=1)

    def forward_split(self, up: torch.Tensor, corr_guidance: torch.Tensor, guidance_term: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of skip_fuse(up, guidance, corr_guidance) with the guidance term precomputed.

        Args:
            up: upsampled per-class features (B, T, C', H, W).
            corr_guidance: per-class cost-map guidance (B, T, Gc, H, W).
            guidance_term: :meth:`guidance_term` of the image (B, out, H, W).

        Returns:
            ((B T), out, H, W), equal to the official computation up to float rounding.
        """
        b, t = up.shape[:2]
        weight = self._first_weight()  # out (C' G Gc) 3 3
        c_up, c_cg = up.shape[2], corr_guidance.shape[2]
        per_class = torch.cat([weight[:, :c_up], weight[:, weight.shape[1] - c_cg :]], dim=1)  # out (C' Gc) 3 3
        x = torch.cat([up, corr_guidance], dim=2)  # B T (C' Gc) H W
        y = F.conv2d(x.reshape(b * t, *x.shape[2:]), per_class, padding=1)  # (B T) out H W
        y = (y.reshape(b, t, *y.shape[1:]) + guidance_term.unsqueeze(1)).reshape(b * t, *y.shape[1:])
        return self.double_conv[1:](y)


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
