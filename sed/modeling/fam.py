"""FAM: spatial-level fusion (a ConvNeXt block) and class-level fusion (linear attention over T).

Attribute names are the official checkpoint names (``cnext.dwconv``, ``attention.attention.q``,
``attention.MLP``...), so official weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sed_trt.sed.modeling.precision import fp32_island


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the last axis, as the official decoder's own (non-``nn.LayerNorm``) module.

    Kept as a distinct class because the official optimiser applies weight decay to it
    (it is not an ``nn.LayerNorm``), and training reproduces that.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.normalized_shape = (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def channel_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the channel axis of (N, C, H, W), without the affine (folded into what follows)."""
    d = x - x.mean(1, keepdim=True)
    return d * torch.rsqrt((d * d).mean(1, keepdim=True) + eps)


def pointwise(
    linear: nn.Linear,
    x: torch.Tensor,
    *,
    norm: nn.LayerNorm | ChannelsLastLayerNorm | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``linear`` applied at every position of (N, C, H, W) as a 1x1 convolution -> (N, C', H, W).

    ``norm``'s affine (a LayerNorm whose normalisation ``x`` already had) is folded into the
    weights, and the output is multiplied by ``scale`` (per output channel), so that
    pointwise(l, channel_norm(x), norm=ln, scale=g) == g * l(ln(x)) channels-last, up to float rounding.
    """
    weight: torch.Tensor = linear.weight  # C' C
    bias: torch.Tensor = linear.bias  # C'
    if norm is not None:
        weight, bias = weight * norm.weight, bias + weight @ norm.bias
    if scale is not None:
        weight, bias = weight * scale[:, None], bias * scale
    return F.conv2d(x, weight[:, :, None, None], bias)


class SpatialFusion(nn.Module):
    """FAM spatial-level fusion: ConvNeXt block (9x9 depthwise, layer scale 1.0), per class."""

    def __init__(self, dim: int, *, kernel_size: int = 9) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = ChannelsLastLayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), N = B*T."""
        y = self.dwconv(x).permute(0, 2, 3, 1)  # N C H W -> N H W C
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)  # N H W C -> N C H W

    def forward_channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without leaving (N, C, H, W): the exported graphs' form.

        The LayerNorm runs over channels by reductions and the two linears are 1x1
        convolutions with the norm's affine and ``gamma`` folded in: no layout change, and
        the bias and activation fuse into the convolutions (ONNX Runtime's NCHWc kernels
        run this block 1.3x faster than the channels-last form; PyTorch eager runs it slower).
        Equal up to float rounding.
        """
        y = channel_norm(self.dwconv(x), self.norm.eps)
        y = self.act(pointwise(self.pwconv1, y, norm=self.norm))
        return x + pointwise(self.pwconv2, y, scale=self.gamma)


class LinearAttention(nn.Module):
    """Linear attention ("Transformers are RNNs", phi = elu + 1) over the category axis."""

    def __init__(self, dim: int, *, num_heads: int = 4, eps: float = 1e-6) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.num_heads = num_heads
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C) -> (N, T, C); every row n is an independent sequence over T classes."""
        n, t, c = x.shape
        h = self.num_heads
        q = (F.elu(self.q(x)) + 1).reshape(n, t, h, c // h).transpose(1, 2)  # N T (H D) -> N H T D
        k = (F.elu(self.k(x)) + 1).reshape(n, t, h, c // h).transpose(1, 2)  # N T (H D) -> N H T D
        # The official code scales v by 1/T before the KV product and by T after (fp16 headroom).
        v = self.v(x).reshape(n, t, h, c // h).transpose(1, 2) / t  # N T (H D) -> N H T D
        kv = k.transpose(2, 3) @ v  # N H D D
        z = 1.0 / (q @ k.sum(dim=2).unsqueeze(-1) + self.eps)  # N H T 1
        out = (q @ kv) * z * t  # N H T D
        return out.transpose(1, 2).reshape(n, t, c)  # N H T D -> N T (H D)

    def summaries(self, x: torch.Tensor) -> torch.Tensor:
        """The only class-mixing quantity: (N, T, C) -> kv (N, H, D, D + 1).

        Per head: kv[:, :D] = sum_t k_t v_t^T and kv[:, D] = sum_t k_t (the normaliser's key
        sum), as one matmul k^T [v | 1]. Sums over the classes given, without the official
        1/T scaling, so the summaries of class chunks add up to those of the whole vocabulary.
        """
        n, t, c = x.shape
        h = self.num_heads
        k = (F.elu(self.k(x.reshape(n * t, c))) + 1).reshape(n, t, h, c // h).permute(0, 2, 3, 1)  # -> N H D T
        v = self.v(x.reshape(n * t, c)).reshape(n, t, h, c // h)  # N T H D
        v1 = torch.cat([v, v.new_ones(n, t, h, 1)], dim=3).transpose(1, 2)  # N T H (D 1) -> N H T (D 1)
        return k @ v1  # N H D (D 1)

    def attend(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """(N, T', C) attending to all classes through their summaries (N, H, D, D + 1) -> (N, T', C).

        Equals :meth:`forward` over the whole vocabulary up to float rounding: the official
        (q (k^T v / T)) z T with z = 1 / (q . sum_t k + eps) is computed as (q kv) z, the
        numerator and the normaliser from one matmul. The summaries add over the whole vocabulary
        (no 1/T), so they grow with T: the product and the ratio are an fp32 island (under fp16
        they would pass 65504 near 2000 classes); the ratio itself is bounded.
        """
        n, t, c = x.shape
        h = self.num_heads
        q = (F.elu(self.q(x.reshape(n * t, c))) + 1).reshape(n, t, h, c // h).transpose(1, 2)  # -> N H T D
        with fp32_island(q):
            y = q.float() @ kv.float()  # N H T (D 1)
            out = y[..., : c // h] / (y[..., c // h :] + self.eps)  # N H T D
        return out.to(q.dtype).transpose(1, 2).reshape(n, t, c)  # N H T D -> N T (H D)


class ClassFusion(nn.Module):
    """FAM class-level fusion (official ``ClassTransformerLayer``): pool, attend over T, MLP, upsample.

    Reproduces the official double residual: output = x + up(pool(x) + attn + mlp), which
    with pooling 1 is 2x + attn + mlp. The released checkpoints depend on it.
    """

    def __init__(self, dim: int, *, num_heads: int = 4) -> None:
        super().__init__()
        self.attention = LinearAttention(dim, num_heads=num_heads)
        self.MLP = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pooling: int = 1) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T, C, H, W); T is dynamic."""
        tok = self._tokens(x, pooling)
        tok = tok + self.attention(self.norm1(tok))
        return self._finish(x, tok, pooling)

    def summaries(self, x: torch.Tensor, pooling: int = 1) -> torch.Tensor:
        """Attention summaries of the classes in x (B, T, C, H, W): kv (B, P, H', D, D + 1).

        P = (H / pooling) * (W / pooling) positions, H' heads of width D (see
        :meth:`LinearAttention.summaries`); they add over class chunks.
        """
        kv = self.attention.summaries(self.norm1(self._tokens(x, pooling)))
        return kv.reshape(x.shape[0], -1, *kv.shape[1:])  # (B P) H' D (D 1) -> B P H' D (D 1)

    def fuse(
        self, x: torch.Tensor, kv: torch.Tensor, pooling: int = 1, *, channels_first: bool = False
    ) -> torch.Tensor:
        """:meth:`forward` for a chunk of classes x (B, T', C, H, W), given the summaries of all classes.

        ``channels_first``: the MLP as 1x1 convolutions (the exported graphs' form, see :meth:`_finish`).
        """
        tok = self._tokens(x, pooling)
        kv = kv.reshape(-1, *kv.shape[2:])  # B P H' D (D 1) -> (B P) H' D (D 1)
        tok = tok + self.attention.attend(self.norm1(tok), kv)
        return self._finish(x, tok, pooling, channels_first=channels_first)

    @staticmethod
    def _tokens(x: torch.Tensor, pooling: int) -> torch.Tensor:
        """(B, T, C, H, W) -> ((B Hp Wp), T, C): one sequence over the classes per (pooled) position."""
        b, t, c, h, w = x.shape
        xp = x.reshape(b * t, c, h, w)  # B T C H W -> (B T) C H W
        if pooling > 1:
            xp = F.avg_pool2d(xp, pooling, stride=pooling)
        hp, wp = xp.shape[-2:]
        return xp.reshape(b, t, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, t, c)  # -> (B Hp Wp) T C

    def _finish(
        self, x: torch.Tensor, tok: torch.Tensor, pooling: int, *, channels_first: bool = False
    ) -> torch.Tensor:
        """MLP on the attended tokens, back to (B, T, C, H, W), and the official double residual.

        ``channels_first`` (the exported graphs' form) moves the tokens back to (B T) C Hp Wp
        before the MLP and runs it as 1x1 convolutions, ReLU fused: in ONNX Runtime 2x faster
        than the token-layout Gemms, in PyTorch eager slower. The same numbers up to float rounding.
        """
        b, t, c, h, w = x.shape
        hp, wp = h // pooling, w // pooling

        def to_classes(y: torch.Tensor) -> torch.Tensor:  # (B Hp Wp) T C -> B T C Hp Wp
            return y.reshape(b, hp, wp, t, c).permute(0, 3, 4, 1, 2)

        if channels_first:
            fc1, fc2 = self.MLP[0], self.MLP[2]
            assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
            z = to_classes(self.norm2(tok)).reshape(b * t, c, hp, wp)  # B T C Hp Wp -> (B T) C Hp Wp
            xp = to_classes(tok) + pointwise(fc2, F.relu(pointwise(fc1, z))).reshape(b, t, c, hp, wp)
        else:
            xp = to_classes(tok + self.MLP(self.norm2(tok)))
        if pooling > 1:
            up = F.interpolate(xp.reshape(b * t, c, hp, wp), size=(h, w), mode="bilinear", align_corners=True)
            xp = up.reshape(b, t, c, h, w)  # (B T) C H W -> B T C H W
        return x + xp
