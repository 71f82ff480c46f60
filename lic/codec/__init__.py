"""Coding images with a model: tensor-level core (padding, determinism) and, on top, the .lic container.

`encode`/`decode` turn images into self-describing .lic bytes and back (api.py); `compress`/`decompress` code
tensors into raw streams (core.py).

The names below (but the cheap `fingerprint`) are imported on first use: torch and CompressAI take seconds to
import, and the CLI (which imports lic.codec.cli, so this package) answers `lic --help`, `lic info` and argument
errors without them.
"""

from importlib import import_module

# Eager: the submodule has this name too, and importing it would otherwise shadow the function with the module.
from lic.codec.fingerprint import fingerprint

_EXPORTS = {
    "CodedImage": "lic.codec.core",
    "Header": "lic.codec.container",
    "ImageWarning": "lic.codec.images",
    "bits_per_pixel": "lic.codec.core",
    "compress": "lic.codec.core",
    "decode": "lic.codec.api",
    "decompress": "lic.codec.core",
    "encode": "lic.codec.api",
    "open_image": "lic.codec.images",
    "pad": "lic.codec.core",
    "read_header": "lic.codec.container",
}
__all__ = ["fingerprint", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lic.codec' has no attribute {name!r}")
