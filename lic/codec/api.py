"""Images to .lic bytes and back: the codec's Python API (no files, no CLI concerns).

    data = lic.codec.encode(image, model)      # PIL image or H x W x 3 / H x W uint8 array -> bytes
    image = lic.codec.decode(data, model)      # -> PIL image, mode "RGB" or "L" as encoded
    header = lic.codec.read_header(data)       # model, fingerprint, size, mode, stream lengths, bpp

decode() treats its input as untrusted. Before any byte reaches CompressAI's C++ rANS decoder, the container is
parsed with every field range-checked and its CRC32 verified, and the model fingerprint is compared. That
decoder never checks for the end of its buffer, and a CRC-valid forged stream can make it read far past it:
- Each symbol may read one more 32-bit word. So every stream is handed over with a zero-filled guard of one word
  per symbol the image has; reads past the stream then see zeros instead of foreign memory.
- A symbol in escape mode reads a count in 4-bit steps for as long as the steps are 0xf, then 15 times that many
  4-bit values. A run of 0xff bytes therefore makes it read 15 times the run's length beyond it (a stream of
  0xff bytes crashed the process). Valid streams never hold such a run (an escape count is at most 8, so its
  steps are never 0xf, and 16 0xff bytes in a row in the rest of a stream has odds of 2^-128), so a stream
  with one is refused; shorter runs cost at most about 100 words, which the guard's slack covers.
- The decoder starts by reading a 64-bit state and reads whole words, so streams must be whole words, 8 bytes
  or more.
Anything the model still trips over on garbage (huge values, NaNs) is reported as a BitstreamError.
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
ESCAPE_RUN = b"\xff" * 16  # refused in a stream: the decoder would read 15 times its length beyond it
GUARD_SLACK_WORDS = 4096  # covers the escape reads the decoder makes on top of one word per symbol


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
        _check_stream(i, stream)
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


def _check_stream(i: int, stream: bytes) -> None:
    """Refuse what no rANS encoder writes and what would make the C++ decoder read without bound."""
    if len(stream) < RANS_MIN_BYTES or len(stream) % 4:
        raise BitstreamError(f"stream {i} has {len(stream)} bytes, which no rANS encoder writes")
    if ESCAPE_RUN in stream:
        raise BitstreamError(f"stream {i} holds {len(ESCAPE_RUN)} 0xff bytes in a row, which no rANS encoder writes")


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
