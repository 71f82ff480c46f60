"""Content hashes of decoded pixels.

SHA-256 of the RGB pixels (not of the file) finds exact duplicates across formats and re-encodes that keep the
pixels (PNG re-compression, metadata edits). Perceptual hashes (imagehash's DCT hash, 64 bits) find near
duplicates: resizing or JPEG re-encoding moves them by 0-2 bits on the sample photographs. A global hash is
fragile under cropping (a 5 % border crop moves it by up to 24 bits), so besides the full image we hash central
crops ("zooms"): a cropped copy then matches one of its original's zooms closely (see docs/datasets.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import imagehash
from PIL import Image


def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 of the size and RGB bytes: equal exactly when two images have the same pixels."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


# The hash looks at a 32x32 thumbnail; box-reducing large images to about this short side first makes hashing
# a 2040x1356 DIV2K image 3x cheaper without changing what the thumbnail shows.
HASH_INPUT_SIDE = 256


def perceptual_hashes(image: Image.Image, zooms: Sequence[float]) -> tuple[str, list[str]]:
    """64-bit DCT hash (hex) of the image and of each central crop that drops `zoom` of every side."""
    gray = image.convert("L")
    factor = min(gray.size) // HASH_INPUT_SIDE
    if factor > 1:
        gray = gray.reduce(factor)
    return str(imagehash.phash(gray)), [str(imagehash.phash(central_crop(gray, zoom))) for zoom in zooms]


def central_crop(image: Image.Image, zoom: float) -> Image.Image:
    """The image without a `zoom` fraction of its width and height on each side."""
    dx, dy = round(image.width * zoom), round(image.height * zoom)
    return image.crop((dx, dy, image.width - dx, image.height - dy))
