"""Coding images with a model: tensor-level core (padding, determinism) and, on top, files and containers."""

from lic.codec.core import CodedImage, compress, decompress, pad

__all__ = ["CodedImage", "compress", "decompress", "pad"]
