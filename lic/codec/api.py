"""Images to .lic bytes and back: the codec's Python API (no files, no CLI concerns).

    data = lic.codec.encode(image, model)      # PIL image or H x W x 3 / H x W uint8 array -> bytes
    image = lic.codec.decode(data, model)      # -> PIL image, mode "RGB" or "L" as encoded
    header = lic.codec.read_header(data)       # model, fingerprint, size, mode, stream lengths, bpp

decode() treats its input as untrusted. Before any byte reaches CompressAI's C++ rANS decoder, the container is
parsed with every field range-checked and its CRC32 verified, the model fingerprint is compared, and the
streams are checked to be whole 32-bit words of at least the decoder's 8-byte initial state. The C++ decoder
itself never checks for the end of its buffer: on garbage it keeps reading 32-bit words past the end (one per
symbol, more in its escape mode). So every stream is handed over with a zero-filled guard behind it that covers
one word per symbol the image can have: a forged stream then decodes to garbage values, never into foreign
memory. Anything that still fails while decoding is reported as a BitstreamError.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from lic.codec.container import Header, pack, size_problem, unpack
from lic.codec.core import PAD_MULTIPLE, CodedImage, compress, decompress
from lic.codec.fingerprint import fingerprint
from lic.codec.images import from_tensor, to_pixels, to_tensor
from lic.errors import BitstreamError, LicError

RANS_MIN_BYTES = 8  # a rANS64 stream starts with its 64-bit state
GUARD_SLACK_WORDS = 4096  # covers the escape (bypass) reads the decoder makes on top of one word per symbol


def encode(image: Image.Image | np.ndarray, model: nn.Module) -> bytes:
    """Code an image into .lic bytes with a model whose CDF tables are up to date (eval mode)."""
    pixels, mode = to_pixels(image)
    height, width = pixels.shape[:2]
    if problem := size_problem(height, width):
        raise LicError(problem)
    coded = compress(model, to_tensor(pixels).to(_device(model)))
    if coded.latent_shape != latent_shape(model, height, width):
        raise RuntimeError(f"{model.spec.name}: latent shape {coded.latent_shape} is not the one decode derives")
    lengths = tuple(len(s) for s in coded.streams)
    header = Header(model.spec.name, fingerprint(model), height, width, mode, PAD_MULTIPLE, lengths)
    return pack(header, coded.streams)


def decode(data: bytes, model: nn.Module) -> Image.Image:
    """Decode .lic bytes made by this same model; a damaged file or another model raises BitstreamError."""
    header, streams = unpack(bytes(data))
    expected = fingerprint(model)
    if header.fingerprint != expected:
        raise BitstreamError(
            f"this file was encoded by model {header.model} (fingerprint {header.fingerprint}), not by the model "
            f"given ({model.spec.name}, fingerprint {expected})"
        )
    if header.pad_multiple != PAD_MULTIPLE:
        raise BitstreamError(f"unsupported padding to multiples of {header.pad_multiple}")
    for i, stream in enumerate(streams):
        if len(stream) < RANS_MIN_BYTES or len(stream) % 4:
            raise BitstreamError(f"stream {i} has {len(stream)} bytes, which no rANS encoder writes")
    shape = latent_shape(model, header.height, header.width)
    guard = bytes(4 * (_max_symbols(model, header.height, header.width) + GUARD_SLACK_WORDS))
    coded = CodedImage([stream + guard for stream in streams], shape, header.height, header.width)
    try:
        x_hat = decompress(model, coded)
    except Exception as err:  # whatever the model trips over on a damaged stream, the stream is to blame
        raise BitstreamError(f"the coded data is corrupted ({type(err).__name__}: {err})") from err
    if tuple(x_hat.shape[-2:]) != (header.height, header.width) or not torch.isfinite(x_hat).all():
        raise BitstreamError("the coded data is corrupted (it decodes to an image of the wrong size or to NaNs)")
    return from_tensor(x_hat, header.mode)


def latent_shape(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The spatial shape the model's decompress() needs, derived from the image size: padded size / stride."""
    stride = getattr(model, "downsampling_factor", None) or model.downsampling  # CompressAI's name, LoC-LIC's
    return _padded(height) // stride, _padded(width) // stride


def _max_symbols(model: nn.Module, height: int, width: int) -> int:
    """Symbols in the largest stream: y has M channels at 1/16 of the padded size (z is smaller)."""
    channels = getattr(model, "M", None) or model.config["M"]  # CompressAI models' attribute, LoC-LIC's config
    return channels * _padded(height) * _padded(width) // 256


def _padded(side: int) -> int:
    return -(-side // PAD_MULTIPLE) * PAD_MULTIPLE


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
