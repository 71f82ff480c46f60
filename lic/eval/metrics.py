"""Image quality and rate, computed the way learned-compression papers do, so numbers compare with theirs.

Quality is measured on what a user gets: the decoded image rounded to 8 bits (the codec returns 8-bit images).
PSNR uses peak 255 over all three channels; MS-SSIM is pytorch-msssim's with data_range 255, the MLIC++ and
CompressAI convention. The rate is the whole file, header included, over the pixels of the original image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim

# pytorch-msssim's 5 scales with an 11-pixel window need sides above (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIDE = 161


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape, peak 255; infinite for identical images."""
    _check_pair(original, decoded)
    mse = np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale, -10 log10(1 - MS-SSIM), as CompressAI's plots show it: 0.99 is 20 dB, 0.999 is
    30 dB, so differences near 1 stay visible. Infinite for a perfect score; NaN stays NaN."""
    if math.isnan(value):
        return math.nan
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


def ms_ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM of two uint8 H x W x 3 images (data_range 255)."""
    _check_pair(original, decoded)
    if min(original.shape[:2]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs sides of at least {MS_SSIM_MIN_SIDE} pixels, got {original.shape[:2]}")

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)

    return float(_ms_ssim(tensor(original), tensor(decoded), data_range=255))


def _check_pair(original: np.ndarray, decoded: np.ndarray) -> None:
    if original.dtype != np.uint8 or decoded.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {original.dtype} and {decoded.dtype}")
    if original.shape != decoded.shape:
        raise ValueError(f"image shapes differ: {original.shape} vs {decoded.shape}")
