"""Residual building blocks of the hierarchical transforms (spec §1.1).

All activations are exact GELU. GDN/IGDN and the sub-pixel convolution come from CompressAI so that their
parameterisation (non-negative reparameterised beta/gamma) and initialisation match the literature.
"""

from __future__ import annotations

import itertools

import torch
from compressai.layers import GDN, conv1x1, conv3x3, subpel_conv3x3
from torch import Tensor, nn


class ResidualBlockWithStride(nn.Module):
    """Downsampling block: conv3x3/2 -> GELU -> conv3x3 -> GDN, plus a strided 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride=stride)
        self.act = nn.GELU()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.gdn = GDN(out_ch)
        self.skip = conv1x1(in_ch, out_ch, stride=stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.gdn(self.conv2(self.act(self.conv1(x))))
        return out + (x if self.skip is None else self.skip(x))


class ResidualBlock(nn.Module):
    """Full-resolution block: conv3x3 -> GELU -> conv3x3 -> GELU, plus an identity or 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.act = nn.GELU()
        self.skip = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.conv2(self.act(self.conv1(x))))
        return out + (x if self.skip is None else self.skip(x))


class ResidualBlockUpsample(nn.Module):
    """Upsampling block: subpel x2 -> GELU -> conv3x3 -> IGDN, plus a second subpel x2 as the skip."""

    def __init__(self, in_ch: int, out_ch: int, upsample: int = 2) -> None:
        super().__init__()
        self.subpel = subpel_conv3x3(in_ch, out_ch, upsample)
        self.act = nn.GELU()
        self.conv = conv3x3(out_ch, out_ch)
        self.igdn = GDN(out_ch, inverse=True)
        self.upsample = subpel_conv3x3(in_ch, out_ch, upsample)

    def forward(self, x: Tensor) -> Tensor:
        return self.igdn(self.conv(self.act(self.subpel(x)))) + self.upsample(x)


class DepthwiseProjection(nn.Sequential):
    """1x1 conv followed by a depthwise 3x3 conv: the q/k/v projection of the linear-attention contexts."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 1),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        )


class ConvMLP(nn.Sequential):
    """1x1 -> GELU -> depthwise 3x3 -> GELU -> 1x1, the feed-forward part of the global contexts."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, out_ch, 1),
        )


def conv_stack(channels: list[int], kernel_size: int) -> nn.Sequential:
    """Convolutions through `channels` with GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        layers.append(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2))
        if i < len(channels) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def efficient_attention(queries: Tensor, keys: Tensor, values: Tensor, heads: int) -> Tensor:
    """Linear ("efficient", Shen et al.) attention over flattened positions.

    queries, keys: B x C x N; values: B x Cv x M with keys over the same M positions as values and queries over
    their own N positions. Keys are softmaxed over positions, queries over channels, so the cost is linear in N.
    Returns B x Cv x N.
    """
    b = queries.shape[0]
    q = queries.reshape(b, heads, -1, queries.shape[-1]).softmax(dim=2)
    k = keys.reshape(b, heads, -1, keys.shape[-1]).softmax(dim=3)
    v = values.reshape(b, heads, -1, values.shape[-1])
    context = torch.matmul(k, v.transpose(2, 3))  # B x h x dk x dv
    out = torch.matmul(context.transpose(2, 3), q)  # B x h x dv x N
    return out.reshape(b, -1, queries.shape[-1])
