"""Helpers of the codec tests: .lic files with any header, as an attacker makes them (the CRC32 is public), and
the reconstruction the codec must give, by the eval-mode forward pass."""

from __future__ import annotations

import struct
import zlib

import torch
from torch import Tensor, nn

from lic.codec.container import MAGIC, MODES, VERSION, Header, _varint
from lic.codec.core import pad
from lic.codec.determinism import deterministic
from lic.models.halves import convolutions_in_halves


def forward_reconstruction(model: nn.Module, x: Tensor) -> Tensor:
    """x_hat of the eval-mode forward pass (1 x 3 x H x W in [0, 1]) in the codec's arithmetic: pinned threads and
    convolutions in halves (without them the two can differ by float rounding: lic.models.halves says where)."""
    with torch.no_grad(), deterministic(), convolutions_in_halves(model):
        return model(pad(x))["x_hat"][..., : x.shape[-2], : x.shape[-1]].clamp(0, 1)


def forge(
    header: Header,
    streams: list[bytes],
    *,
    name: bytes | None = None,
    height: bytes | None = None,
    width: bytes | None = None,
    mode: int | None = None,
    padding: int | None = None,
    lengths: list[bytes] | None = None,
) -> bytes:
    """A .lic byte string of `header` and `streams` with a correct CRC; each keyword replaces that field's raw
    bytes (a name of any length or content, non-canonical varints, any mode or padding byte, lengths that do
    not match the streams). The stream count is len(streams)."""
    name = header.model.encode("ascii") if name is None else name
    head = MAGIC + bytes([VERSION]) + bytes.fromhex(header.fingerprint) + bytes([len(name)]) + name
    head += _varint(header.height) if height is None else height
    head += _varint(header.width) if width is None else width
    head += bytes([MODES.index(header.mode) if mode is None else mode])
    head += bytes([header.pad_multiple.bit_length() - 1 if padding is None else padding, len(streams)])
    head += b"".join([_varint(len(s)) for s in streams] if lengths is None else lengths)
    payload = b"".join(streams)
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload
