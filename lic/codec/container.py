"""The .lic container: a small self-describing header in front of the entropy-coded streams (docs/bitstream.md).

The header carries everything the decoder needs besides the model: which model made the file (name and
fingerprint, so decoding with another model is a clear error instead of noise), the image size and colour mode,
how it was padded, and the length of each stream. A CRC32 over header and payload catches corruption before
any byte reaches the entropy decoder. Integers that grow with the image are unsigned LEB128 varints, so a
Kodak-sized LoC-LIC file spends about 31 bytes on its header.

Parsing never trusts the file: every field is range-checked, and every failure is a BitstreamError.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from lic.errors import BitstreamError

MAGIC = b"LIC"
VERSION = 1
MODES = ("RGB", "L")  # colour mode byte: index into this tuple
FINGERPRINT_BYTES = 4
MAX_NAME_BYTES = 64
MAX_STREAMS = 4
MAX_SIDE = 1 << 16  # height and width are below this; MAX_PIXELS is the tighter bound
MAX_PIXELS = 1 << 25  # 8192 x 4096 (8K UHD fits): about 9 GiB to code on the CPU, docs/bitstream.md
# What decode() spends on a file unless told otherwise: the declared size alone sets the cost of decoding
# (4096 x 2048 took minutes and GiBs here), and the CRC is no protection against a forged header.
DECODE_BUDGET_PIXELS = 1 << 23  # 4096 x 2048
_VARINT_MAX_BYTES = 5  # enough for any 32-bit value


@dataclass(frozen=True)
class Header:
    """What a .lic file says about itself."""

    model: str  # registry name of the model that encoded it, e.g. "loclic"
    fingerprint: str  # hex digest of that model's config and weights (lic.codec.fingerprint)
    height: int
    width: int
    mode: str  # "RGB" or "L": the colour mode decode() gives back
    pad_multiple: int  # the coded image was replicate-padded bottom/right to multiples of this
    stream_lengths: tuple[int, ...]  # bytes of each entropy-coded stream, in the model's order
    header_bytes: int = 0  # size of the header itself (filled in when packing or parsing)

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + sum(self.stream_lengths)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file, header included."""
        return self.total_bytes * 8 / (self.height * self.width)


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise header and streams into one .lic byte string (`header_bytes` is ignored)."""
    if header.stream_lengths != tuple(len(s) for s in streams):
        raise ValueError(f"header announces streams of {header.stream_lengths} bytes, got {[len(s) for s in streams]}")
    if len(bytes.fromhex(header.fingerprint)) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes of hex, got {header.fingerprint!r}")
    name = header.model.encode("ascii")
    if not 0 < len(name) <= MAX_NAME_BYTES:
        raise ValueError(f"model name must be 1 to {MAX_NAME_BYTES} ASCII bytes, got {header.model!r}")
    if problem := size_problem(header.height, header.width):
        raise ValueError(problem)
    if not 0 < len(streams) <= MAX_STREAMS:
        raise ValueError(f"expected 1 to {MAX_STREAMS} streams, got {len(streams)}")
    pad_log2 = header.pad_multiple.bit_length() - 1
    if header.pad_multiple != 1 << pad_log2:
        raise ValueError(f"pad multiple must be a power of two, got {header.pad_multiple}")
    head = b"".join(
        [
            MAGIC,
            bytes([VERSION]),
            bytes.fromhex(header.fingerprint),
            bytes([len(name)]),
            name,
            _varint(header.height),
            _varint(header.width),
            bytes([MODES.index(header.mode), pad_log2, len(streams)]),
            *(_varint(len(s)) for s in streams),
        ]
    )
    payload = b"".join(streams)
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload


def unpack(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Header, list[bytes]]:
    """Parse and verify a .lic byte string: (header, streams). Anything malformed raises BitstreamError, and so
    does a header declaring more than `max_pixels`, before the payload is looked at."""
    header, crc = _parse_header(data, max_pixels)
    payload = memoryview(data)[header.header_bytes :]
    if len(payload) != sum(header.stream_lengths):
        raise BitstreamError(
            f"payload is {len(payload)} bytes but the header announces {sum(header.stream_lengths)} "
            "(truncated or padded file)"
        )
    actual = zlib.crc32(payload, zlib.crc32(memoryview(data)[: header.header_bytes - 4]))
    if actual != crc:
        raise BitstreamError(f"checksum mismatch (CRC32 {actual:08x}, header says {crc:08x}): the file is corrupted")
    streams, start = [], 0
    for length in header.stream_lengths:
        streams.append(bytes(payload[start : start + length]))
        start += length
    return header, streams


def read_header(data: bytes) -> Header:
    """The header of a .lic byte string, without verifying the payload (cheap: for `lic info` and routing)."""
    return _parse_header(data, MAX_PIXELS)[0]


def size_problem(height: int, width: int) -> str | None:
    """Why height x width is not an image size lic codes, or None if it is."""
    if not (0 < height < MAX_SIDE and 0 < width < MAX_SIDE):
        return f"image size {height} x {width} is outside 1..{MAX_SIDE - 1} per side"
    if height * width > MAX_PIXELS:
        return (
            f"image of {height} x {width} is larger than the limit of {MAX_PIXELS:,} pixels (8192 x 4096); "
            "split it into tiles"
        )
    return None


class _Reader:
    """Bounds-checked reads from a byte string; running off the end is a BitstreamError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError(f"file ends inside the header ({what}): truncated or not a .lic file")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        """A canonical varint: the shortest encoding of a 32-bit value (no trailing zero groups), so that one
        header has one byte string."""
        start, value = self.pos, 0
        for i in range(_VARINT_MAX_BYTES):
            b = self.byte(what)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if (i and not b) or value >> 32:
                    raise BitstreamError(
                        f"header field {what} is not a canonical number ({self.data[start : self.pos].hex(' ')})"
                    )
                return value
        raise BitstreamError(f"header field {what} is not a canonical number (more than {_VARINT_MAX_BYTES} bytes)")


def _parse_header(data: bytes, max_pixels: int) -> tuple[Header, int]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise BitstreamError("empty file: not a .lic file")
    r = _Reader(data)
    if r.take(len(MAGIC), "magic") != MAGIC:
        raise BitstreamError("not a .lic file (bad magic bytes)")
    version = r.byte("version")
    if version != VERSION:
        raise BitstreamError(f"unsupported .lic format version {version} (this lic reads version {VERSION})")
    fingerprint = r.take(FINGERPRINT_BYTES, "model fingerprint").hex()
    name_length = r.byte("model name length")
    if not 0 < name_length <= MAX_NAME_BYTES:
        raise BitstreamError(f"bad model name length {name_length}")
    name = r.take(name_length, "model name")
    if not all(0x21 <= c < 0x7F for c in name):
        raise BitstreamError("model name is not printable ASCII")
    height, width = r.varint("height"), r.varint("width")
    if problem := size_problem(height, width):
        raise BitstreamError(problem)
    if height * width > max_pixels:
        raise BitstreamError(
            f"image of {height} x {width} ({height * width:,} pixels) is over the decoding budget of "
            f"{max_pixels:,} pixels; raise it (--max-pixels, max_pixels=) only for files you trust"
        )
    mode_index, pad_log2, count = r.byte("colour mode"), r.byte("padding"), r.byte("stream count")
    if mode_index >= len(MODES):
        raise BitstreamError(f"unknown colour mode {mode_index}")
    if pad_log2 > 12:
        raise BitstreamError(f"bad padding field {pad_log2}")
    if not 0 < count <= MAX_STREAMS:
        raise BitstreamError(f"bad stream count {count}")
    lengths = tuple(r.varint(f"length of stream {i}") for i in range(count))
    (crc,) = struct.unpack(">I", r.take(4, "CRC32"))
    header = Header(name.decode("ascii"), fingerprint, height, width, MODES[mode_index], 1 << pad_log2, lengths, r.pos)
    return header, crc


def _varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, high bit set on every byte but the last."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)
