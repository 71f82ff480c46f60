"""One way to decode a raw image into 8-bit RGB, shared by the manifest, deduplication and later loaders.

Web-scale sources hold every kind of file: grayscale and CMYK JPEGs (COCO, ImageNet), palette and RGBA PNGs,
16-bit scans, truncated downloads. Whatever can be turned into faithful RGB is converted, and the conversion is
recorded; what cannot (transparency, float data, broken files) raises UnusableImageError with the reason, so a stage
counts it and goes on instead of stopping.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})
# Modes PIL converts to RGB without losing meaning (no alpha, no more than 8 bits per channel).
_DIRECT = {"L": "grayscale (L)", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "LAB", "HSV": "HSV"}
_ALPHA = {"RGBA", "LA", "RGBa", "La", "PA"}
_SIXTEEN_BIT_GRAY = {"I;16", "I;16L", "I;16B", "I;16N"}


class UnusableImageError(Exception):
    """A file that cannot become a training image; `reason` is what the manifest's status says."""

    def __init__(self, reason: str, size: tuple[int, int] | None = None, mode: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.size = size
        self.mode = mode


@dataclass(frozen=True)
class Decoded:
    """An image as 8-bit RGB, the mode the file stored it in, and the conversion applied ("" for none)."""

    image: Image.Image
    mode: str
    note: str


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def image_member(name: str) -> str | None:
    """Archive selection that keeps image members at their path inside the archive."""
    return name if is_image_name(name) else None


def load_rgb(path: Path | str) -> Decoded:
    """Decode `path` fully (truncation shows only then), apply EXIF orientation, and convert to RGB."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UnusableImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                mode = _stored_mode(opened)
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise UnusableImageError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnusableImageError(f"too many pixels ({err})") from None
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, EOFError, struct.error... on bad data
        raise UnusableImageError(f"truncated or corrupt ({type(err).__name__}: {err})") from None
    return _to_rgb(image, mode)


def _stored_mode(image: Image.Image) -> str:
    """PIL's mode, except that 16-bit RGB (which PIL silently reads as 8-bit RGB) shows as `RGB;16`."""
    if image.mode == "RGB" and image.tile and ";16" in str(image.tile[0].args):
        return "RGB;16"
    return image.mode


def _to_rgb(image: Image.Image, mode: str) -> Decoded:
    size = image.size
    if mode == "RGB":
        return Decoded(image, mode, "")
    if mode == "RGB;16":
        return Decoded(image, mode, "converted from 16-bit RGB (high byte kept)")
    if mode in _DIRECT:
        return Decoded(image.convert("RGB"), mode, f"converted from {_DIRECT[mode]}")
    if mode == "P":
        has_alpha = "transparency" in image.info
        rgb = _drop_opaque_alpha(image.convert("RGBA"), mode) if has_alpha else image.convert("RGB")
        return Decoded(rgb, mode, "converted from palette (P)")
    if mode in _ALPHA:
        return Decoded(_drop_opaque_alpha(image.convert("RGBA"), mode), mode, f"converted from {mode} (opaque)")
    if mode in _SIXTEEN_BIT_GRAY:
        gray = np.rint(np.asarray(image) / 257.0).astype(np.uint8)
        return Decoded(Image.fromarray(gray).convert("RGB"), mode, f"converted from 16-bit grayscale ({mode})")
    raise UnusableImageError(f"unsupported mode ({mode})", size, mode)


def _drop_opaque_alpha(rgba: Image.Image, mode: str) -> Image.Image:
    """RGB of an image whose alpha is fully opaque; colour under transparent pixels is undefined, so refuse."""
    low, _ = rgba.getchannel("A").getextrema()
    if low < 255:
        raise UnusableImageError(f"transparent pixels ({mode}): the colour behind them is undefined", rgba.size, mode)
    return rgba.convert("RGB")
