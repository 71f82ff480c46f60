"""Checkerboard split of the latent grid (spec §2.2).

Anchors are the positions where row + col is odd; they are coded first and serve as context for the other
half. Every part of the model and of the coder takes its masks from here so the parity cannot disagree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def anchor_mask(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """1 x 1 x H x W float mask, 1 at anchors ((row + col) odd)."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return ((rows + cols) % 2 == 1).to(torch.float32).view(1, 1, height, width)


def window_exclusions(height: int, width: int, window: int, device: torch.device | str = "cpu") -> Tensor:
    """HW x K² x K² boolean: True where a window's (query slot, key slot) pair is masked out of the attention.

    The official MLIC++/LoC-LIC rule (reference fact sheet §7): the window around each latent position is cut
    from the anchor map with zero padding, so a slot is "valid" iff it lies inside the latent and on an anchor.
    A valid query attends only to valid keys; every other query (a non-anchor, or a slot outside the latent)
    attends to all K² slots, because the official -100 on its whole row is a constant shift that softmax
    ignores. Slot s = (a, b), a, b in -K//2..K//2, has flat index (a + K//2) * K + (b + K//2).
    """
    anchors = anchor_mask(height, width, device)
    valid = F.unfold(anchors, window, padding=window // 2)[0].T.bool()  # HW x K²
    return valid[:, :, None] & ~valid[:, None, :]
