"""Tensor-level coding for any registered model: padding, determinism, and the crop back.

Models code images whose sides are multiples of 64 (z sits at H/64). Images of any size are padded on the
bottom and right by repeating the edge pixels, which costs fewer bits than zeros, and the decoder crops back to
the original height and width. Because padding only ever goes bottom/right, height and width are all the
decoder needs to undo it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lic.codec.determinism import deterministic
from lic.models.inputs import check_images

PAD_MULTIPLE = 64


@dataclass(frozen=True)
class CodedImage:
    """The entropy-coded streams of one image, as the model's compress() returned them, plus its size."""

    streams: list[bytes]  # e.g. [y, z] for hyperprior models, [y] for the factorized prior
    latent_shape: tuple[int, int]  # spatial shape the model's decompress() needs
    height: int
    width: int


def pad(x: Tensor, multiple: int = PAD_MULTIPLE) -> Tensor:
    """Replicate-pad B x C x H x W on the bottom and right to multiples of `multiple`."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


@torch.inference_mode()
def compress(model: nn.Module, x: Tensor) -> CodedImage:
    """Code one image (1 x 3 x H x W in [0, 1]) with a model whose CDF tables are up to date."""
    check_images(x)
    if x.shape[0] != 1:
        raise ValueError(f"compress codes one image at a time, got a batch of {x.shape[0]}")
    with deterministic():
        out = model.compress(pad(x))
    streams = [strings[0] for strings in out["strings"]]
    return CodedImage(streams, tuple(int(s) for s in out["shape"]), x.shape[-2], x.shape[-1])


@torch.inference_mode()
def decompress(model: nn.Module, coded: CodedImage) -> Tensor:
    """Decode to 1 x 3 x H x W in [0, 1] (clamped: the synthesis transform is unbounded)."""
    with deterministic():
        x_hat = model.decompress([[s] for s in coded.streams], coded.latent_shape)["x_hat"]
    return x_hat[..., : coded.height, : coded.width].clamp(0, 1)


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
    """The rate of `num_bytes` coding a height x width image."""
    return num_bytes * 8 / (height * width)


def num_bits(coded: CodedImage) -> int:
    """Bits in the entropy-coded streams alone (no container header)."""
    return 8 * sum(len(s) for s in coded.streams)
