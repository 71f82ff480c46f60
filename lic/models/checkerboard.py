"""Checkerboard split of the latent grid (spec §2.2).

Anchors are the positions where row + col is odd; they are coded first and serve as context for the other
half. Every part of the model and of the coder takes its masks from here so the parity cannot disagree.
"""

from __future__ import annotations

import torch
from torch import Tensor


def anchor_mask(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """1 x 1 x H x W float mask, 1 at anchors ((row + col) odd)."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return ((rows + cols) % 2 == 1).to(torch.float32).view(1, 1, height, width)


def window_anchor_masks(window: int) -> Tensor:
    """2 x K x K boolean anchor pattern of a K x K window, for centres with (row + col) even (0) and odd (1)."""
    offsets = torch.arange(window) - window // 2
    parity = (offsets.view(-1, 1) + offsets.view(1, -1)).flatten()
    return torch.stack([(parity % 2 == 1), (parity % 2 == 0)])
