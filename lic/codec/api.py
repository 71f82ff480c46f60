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

What a file may cost is bounded before the model runs: the declared size against a pixel budget (the decode
time and memory follow the size, not the file), the stream count against what the model codes, and every
stream's length against what its symbols can take in rANS (`CodedStream.length_bounds`, docs/bitstream.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lic.codec.container import DECODE_BUDGET_PIXELS, Header, pack, size_problem, unpack
from lic.codec.core import PAD_MULTIPLE, CodedImage, compress, decompress
from lic.codec.fingerprint import fingerprint
from lic.codec.images import from_tensor, to_pixels, to_tensor
from lic.errors import BitstreamError, LicError

RANS_MIN_BYTES = 8  # a rANS64 stream starts with its 64-bit state
ESCAPE_RUN = b"\xff" * 16  # refused in a stream: the decoder would read 15 times its length beyond it
GUARD_SLACK_WORDS = 4096  # covers the escape reads the decoder makes on top of one word per symbol
# rANS64 as CompressAI runs it: 16-bit frequencies, escapes as a 4-bit count and up to 8 4-bit digits (32 bits).
# A symbol costs at most 16 + 4 + 32 = 52 bits; 53 covers the coder's rounding. At least it costs what the most
# probable entry of its table costs, less the rounding of one step (log2(1 - 2^-15) bits).
MAX_SYMBOL_BITS = 53
ROUNDING_BITS = -math.log2(1 - 2**-15)


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


def decode(data: bytes, model: nn.Module, max_pixels: int = DECODE_BUDGET_PIXELS) -> Image.Image:
    """Decode .lic bytes made by this same model; a damaged file, another model or an image of more than
    `max_pixels` raises BitstreamError (the budget is checked first, before the model is touched)."""
    header, streams = unpack(bytes(data), max_pixels)
    expected = fingerprint(model)
    if (header.model, header.fingerprint) != (model.spec.name, expected):
        raise BitstreamError(
            f"this file was encoded by model {header.model} (fingerprint {header.fingerprint}), not by the model "
            f"given ({model.spec.name}, fingerprint {expected})"
        )
    if header.pad_multiple != PAD_MULTIPLE:
        raise BitstreamError(f"unsupported padding to multiples of {header.pad_multiple}")
    layout = coded_streams(model, header.height, header.width)
    if len(streams) != len(layout):
        raise BitstreamError(f"the file holds {len(streams)} streams, but model {model.spec.name} codes {len(layout)}")
    for i, (stream, coded) in enumerate(zip(streams, layout, strict=True)):
        _check_stream(i, stream, coded)
    shape = latent_shape(model, header.height, header.width)
    guard = bytes(4 * (max(coded.symbols for coded in layout) + GUARD_SLACK_WORDS))
    coded = CodedImage([stream + guard for stream in streams], shape, header.height, header.width)
    try:
        x_hat = decompress(model, coded)
    except Exception as err:  # whatever the model trips over on a damaged stream, the stream is to blame
        raise BitstreamError(f"the coded data is corrupted ({type(err).__name__}: {err})") from err
    if tuple(x_hat.shape[-2:]) != (header.height, header.width) or not torch.isfinite(x_hat).all():
        raise BitstreamError("the coded data is corrupted (it decodes to an image of the wrong size or to NaNs)")
    return from_tensor(x_hat, header.mode)


@dataclass(frozen=True)
class CodedStream:
    """One entropy-coded stream of a model for one image size: its symbols and the CDF tables that code them."""

    name: str  # "y" or "z"
    symbols: int
    positions: int  # latent positions; symbols = positions x channels
    per_channel: bool  # one table per channel (EntropyBottleneck) or one chosen per symbol (GaussianConditional)
    entropy_model: nn.Module

    def length_bounds(self) -> tuple[int, int]:
        """(fewest, most) bytes rANS can write for these symbols (docs/bitstream.md derives them).

        rANS64 writes its 64-bit state and 32-bit words: 64 + 32 R bits. Its state grows by the cost of each
        symbol and starts at 2^31, so 32 R is at least the total cost less 33 bits and at most the total cost."""
        largest = _largest_frequencies(self.entropy_model)
        precision = self.entropy_model.entropy_coder_precision
        cheapest = (precision - torch.log2(largest.double()) - ROUNDING_BITS).clamp(min=0)
        total = self.positions * float(cheapest.sum()) if self.per_channel else self.symbols * float(cheapest.min())
        fewest = RANS_MIN_BYTES + 4 * max(0, math.floor((total - 33) / 32))
        return fewest, RANS_MIN_BYTES + 4 * math.ceil(self.symbols * MAX_SYMBOL_BITS / 32)


def coded_streams(model: nn.Module, height: int, width: int) -> list[CodedStream]:
    """The streams `model` writes for a height x width image, in order: y (M channels at 1/16 of the padded
    size), then z (the hyperprior's channels at 1/64) for models with a hyperprior; the factorized prior codes
    y alone, with a table per channel."""
    y_channels = getattr(model, "M", None) or model.config["M"]  # CompressAI models' attribute, LoC-LIC's config
    y_positions = (_padded(height) // 16) * (_padded(width) // 16)
    bottleneck = model.entropy_bottleneck
    if not hasattr(model, "gaussian_conditional"):
        return [CodedStream("y", y_channels * y_positions, y_positions, True, bottleneck)]
    z_positions = (_padded(height) // 64) * (_padded(width) // 64)
    return [
        CodedStream("y", y_channels * y_positions, y_positions, False, model.gaussian_conditional),
        CodedStream("z", bottleneck.channels * z_positions, z_positions, True, bottleneck),
    ]


def _largest_frequencies(entropy_model: nn.Module) -> Tensor:
    """The frequency of the most probable entry of each CDF table (escape entry included)."""
    cdf, lengths = entropy_model.quantized_cdf.long(), entropy_model.cdf_length.reshape(-1).long()
    frequencies = cdf.diff(dim=1)
    in_table = torch.arange(frequencies.shape[1]) < (lengths - 1)[:, None]
    return (frequencies * in_table).amax(dim=1)


def _check_stream(i: int, stream: bytes, coded: CodedStream) -> None:
    """Refuse what no rANS encoder writes and what would make the C++ decoder read without bound."""
    if len(stream) < RANS_MIN_BYTES or len(stream) % 4:
        raise BitstreamError(f"stream {i} has {len(stream)} bytes, which no rANS encoder writes")
    fewest, most = coded.length_bounds()
    if not fewest <= len(stream) <= most:
        bound = f"at least {fewest:,}" if len(stream) < fewest else f"at most {most:,}"
        raise BitstreamError(
            f"stream {i} ({coded.name}) has {len(stream):,} bytes, but its {coded.symbols:,} symbols take {bound}"
        )
    if ESCAPE_RUN in stream:
        raise BitstreamError(f"stream {i} holds {len(ESCAPE_RUN)} 0xff bytes in a row, which no rANS encoder writes")


def latent_shape(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The spatial shape the model's decompress() needs, derived from the image size: padded size / stride."""
    stride = getattr(model, "downsampling_factor", None) or model.downsampling  # CompressAI's name, LoC-LIC's
    return _padded(height) // stride, _padded(width) // stride


def _padded(side: int) -> int:
    return -(-side // PAD_MULTIPLE) * PAD_MULTIPLE


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
