"""Hierarchical analysis/synthesis transforms and the hyperprior transforms (spec §1.2-1.5).

"Hierarchical" means few channels at high resolution and more as resolution halves (N = 32, 64, 128), which is
where LoC-LIC saves most of its multiply-accumulates compared with MLIC++ (N = 192 at every level).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from compressai.layers import conv3x3, subpel_conv3x3
from torch import nn

from lic.models.layers import ResidualBlock, ResidualBlockUpsample, ResidualBlockWithStride


def analysis_transform(widths: Sequence[int], latent_channels: int) -> nn.Sequential:
    """g_a: x (3 x H x W) -> y (M x H/16 x W/16): one strided and one plain residual block per level."""
    layers: list[nn.Module] = []
    in_ch = 3
    for width in widths:
        layers += [ResidualBlockWithStride(in_ch, width), ResidualBlock(width, width)]
        in_ch = width
    layers.append(conv3x3(in_ch, latent_channels, stride=2))
    return nn.Sequential(*layers)


def synthesis_transform(widths: Sequence[int], latent_channels: int) -> nn.Sequential:
    """g_s: y_hat -> x_hat, mirroring g_a; channels shrink in the block before each upsampling."""
    rev = list(reversed(widths))  # e.g. [128, 64, 32]
    layers: list[nn.Module] = [
        ResidualBlock(latent_channels, latent_channels),
        ResidualBlockUpsample(latent_channels, rev[0]),
    ]
    for prev, width in itertools.pairwise(rev):
        layers += [ResidualBlock(prev, width), ResidualBlockUpsample(width, width)]
    layers += [ResidualBlock(rev[-1], rev[-1]), subpel_conv3x3(rev[-1], 3, 2)]
    return nn.Sequential(*layers)


def hyper_analysis(latent_channels: int, hyper_channels: int) -> nn.Sequential:
    """h_a: y (not |y|) -> z at H/64 with `hyper_channels` channels."""
    m, n = latent_channels, hyper_channels
    return nn.Sequential(
        conv3x3(m, n), nn.GELU(),
        conv3x3(n, n), nn.GELU(),
        conv3x3(n, n, stride=2), nn.GELU(),
        conv3x3(n, n), nn.GELU(),
        conv3x3(n, n, stride=2),
    )  # fmt: skip


def hyper_synthesis(latent_channels: int, hyper_channels: int) -> nn.Sequential:
    """h_s: z_hat -> hyper parameters (2M channels at H/16): the first M are "scales", the last M "means"."""
    m, n = latent_channels, hyper_channels
    return nn.Sequential(
        conv3x3(n, m), nn.GELU(),
        subpel_conv3x3(m, m, 2), nn.GELU(),
        conv3x3(m, m * 3 // 2), nn.GELU(),
        subpel_conv3x3(m * 3 // 2, m * 3 // 2, 2), nn.GELU(),
        conv3x3(m * 3 // 2, m * 2),
    )  # fmt: skip
