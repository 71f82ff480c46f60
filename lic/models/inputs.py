"""Input checks, so that a wrong tensor fails with a sentence instead of a shape error deep in a conv."""

from __future__ import annotations

import torch
from torch import Tensor


def check_images(x: Tensor, multiple: int | None = None) -> None:
    """Raise ValueError unless x is a float B x 3 x H x W batch in [0, 1] (H, W multiples of `multiple`)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x H x W tensor (RGB), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image is empty ({h} x {w})")
    if multiple is not None and (h % multiple or w % multiple):
        raise ValueError(
            f"height and width must be multiples of {multiple} for this model, got {h} x {w}; "
            "pad the image (lic.codec pads automatically)"
        )
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"pixel values must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
