"""Which file names are images: the one list the source adapters and `lic compress` use.

Its own module, with nothing heavy imported, so `lic compress` can expand folders and report a missing file before it
imports the image libraries (bench/cli_latency.py).
"""

from __future__ import annotations

from pathlib import PurePath

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})


def is_image_name(name: str) -> bool:
    return PurePath(name).suffix.lower() in IMAGE_SUFFIXES


def image_member(name: str) -> str | None:
    """Archive selection that keeps image members at their path inside the archive."""
    return name if is_image_name(name) else None
