"""Content hashes of decoded pixels.

SHA-256 of the RGB pixels (not of the file) finds exact duplicates across formats and re-encodes that keep the
pixels (PNG re-compression, metadata edits). Perceptual hashes (imagehash's DCT hash, 64 bits) find near
duplicates: resizing or JPEG re-encoding moves them by 0-2 bits on the sample photographs. A global hash is
fragile under cropping (a 5 % border crop moves it by up to 24 bits), so besides the full image we hash central
crops ("zooms"): a cropped copy then matches one of its original's zooms closely (see docs/datasets.md). At corpus
scale 64 bits match distinct images by chance, so a 256-bit DCT hash of the same views confirms each pair found.
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


# The 64-bit hash looks at a 32x32 thumbnail, the 256-bit one at 64x64; box-reducing the image to about these short
# sides first makes hashing a 2040x1356 DIV2K image 3x cheaper, and the 256-bit hash of a 500x375 one 2.6x,
# without changing what the thumbnails show.
HASH_INPUT_SIDE = {8: 256, 16: 128}  # hash side (bits = side^2) -> short side the image is reduced to


def perceptual_hashes(image: Image.Image, zooms: Sequence[float]) -> dict[str, str | list[str]]:
    """The manifest's perceptual columns: the DCT hash (hex) of the image and of each central crop that drops
    `zoom` of every side, at 64 bits (`phash`, `phash_zoom`: what the neighbour search indexes) and at 256 bits
    (`phash256`, `phash256_zoom`: what confirms a pair the search found, lic.data.dedupe)."""
    gray = image.convert("L")
    columns: dict[str, str | list[str]] = {}
    for side, name in ((8, "phash"), (16, "phash256")):
        factor = min(gray.size) // HASH_INPUT_SIDE[side]
        reduced = gray.reduce(factor) if factor > 1 else gray
        columns[name] = str(imagehash.phash(reduced, hash_size=side))
        columns[f"{name}_zoom"] = [str(imagehash.phash(central_crop(reduced, zoom), hash_size=side)) for zoom in zooms]
    return columns


def central_crop(image: Image.Image, zoom: float) -> Image.Image:
    """The image without a `zoom` fraction of its width and height on each side."""
    dx, dy = round(image.width * zoom), round(image.height * zoom)
    return image.crop((dx, dy, image.width - dx, image.height - dy))
