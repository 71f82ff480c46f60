"""Coding images with a model: tensor-level core (padding, determinism) and, on top, the .lic container.

`encode`/`decode` turn images into self-describing .lic bytes and back (api.py); `compress`/`decompress` code
tensors into raw streams (core.py).
"""

from lic.codec.api import decode, encode
from lic.codec.container import Header, read_header
from lic.codec.core import CodedImage, bits_per_pixel, compress, decompress, pad
from lic.codec.fingerprint import fingerprint
from lic.codec.images import ImageWarning, open_image

__all__ = [
    "CodedImage",
    "Header",
    "ImageWarning",
    "bits_per_pixel",
    "compress",
    "decode",
    "decompress",
    "encode",
    "fingerprint",
    "open_image",
    "pad",
    "read_header",
]
