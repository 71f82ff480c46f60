"""One way to read a raw image and decode it into 8-bit RGB, shared by the manifest, dedupe and the shard writer.

Web-scale sources hold every kind of file: grayscale and CMYK JPEGs (COCO, ImageNet), palette and RGBA PNGs,
16-bit scans, truncated downloads. Whatever can be turned into faithful RGB is converted, and the conversion is
recorded; what cannot (transparency, float data, broken files) raises UnusableImageError with the reason, so a stage
counts it and goes on instead of stopping.

Training images arrive as uncompressed tar shards (`data/raw/<source>/train-00000.tar`, ...), evaluation images as
loose files. `open_bytes(path, member)` reads either: a member is read in place at its offset, from a listing of
the shard made once per process, so nothing is ever extracted.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lic.errors import LicError

# Modes PIL converts to RGB without losing meaning (no alpha, no more than 8 bits per channel).
_DIRECT = {"L": "grayscale (L)", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "LAB", "HSV": "HSV"}
_ALPHA = {"RGBA", "LA", "RGBa", "La", "PA"}
_SIXTEEN_BIT_GRAY = {"I;16", "I;16L", "I;16B", "I;16N"}
# A budget on what one untrusted file costs before Pillow's pixel limit applies: the largest real image here (a
# DIV2K PNG) is about 6 MB; nothing of 256 MiB is a photograph this pipeline wants.
MAX_FILE_BYTES = 256 * 2**20
_TAR_END = 20 * 512  # tar pads its end-of-archive marker to a record of 20 blocks; more left over is damage


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


@dataclass(frozen=True, eq=False)
class TarListing:
    """The regular-file members of a tar shard, name -> (data offset, size) in archive order, and what could not
    be listed: `damaged_at` is the byte offset where unreadable data begins (None for an intact shard)."""

    members: dict[str, tuple[int, int]]
    damaged_at: int | None


def tar_listing(path: Path | str) -> TarListing:
    """The listing of a tar shard, made once per process and shard version (size and modification time)."""
    stat = os.stat(path)
    return _listing(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _listing(path: str, size: int, mtime_ns: int) -> TarListing:
    members = {}
    try:
        with tarfile.open(path, mode="r:") as tf:  # reads headers only, seeking over the data
            for info in tf:
                if info.isfile():
                    members[info.name] = (info.offset_data, info.size)
            end = tf.offset
    except tarfile.TarError as err:
        raise LicError(f"{path}: not a readable tar shard ({err})") from None
    # tarfile ends a listing silently at a corrupt header: whatever lies beyond the end marker was not listed
    damaged_at = end if size - end > _TAR_END else None
    return TarListing(members, damaged_at)


def open_bytes(path: Path | str, member: str | None = None) -> bytes:
    """The bytes of a loose file (`member` None) or of one member of an uncompressed tar shard, read in place.

    A member whose data runs past the end of the shard (a truncated copy) raises UnusableImageError, so it is a
    reported skip; a member the shard does not hold is a LicError (the shard changed since the manifest)."""
    if member is None:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise UnusableImageError(f"too large ({size} bytes, more than {MAX_FILE_BYTES})")
        return Path(path).read_bytes()
    listing = tar_listing(path)
    try:
        offset, size = listing.members[member]
    except KeyError:
        raise LicError(f"{path} holds no member {member!r}: was it rewritten after the manifest?") from None
    if size > MAX_FILE_BYTES:
        raise UnusableImageError(f"too large ({size} bytes, more than {MAX_FILE_BYTES})")
    with open(path, "rb") as shard:
        shard.seek(offset)
        data = shard.read(size)
    if len(data) < size:
        raise UnusableImageError(f"truncated or corrupt (archive member ends after {len(data)} of {size} bytes)")
    return data


def load_rgb(path: Path | str, member: str | None = None) -> Decoded:
    """Read a file or tar member and decode it: decode_rgb(open_bytes(path, member))."""
    return decode_rgb(open_bytes(path, member))


def decode_rgb(data: bytes) -> Decoded:
    """Decode an image file's bytes fully (truncation shows only then), apply EXIF orientation, convert to RGB."""
    if not data:
        raise UnusableImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
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


def is_jpeg(data: bytes) -> bool:
    """Whether a file's bytes are a JPEG (or MPO, a JPEG with extra frames): its start-of-image marker."""
    return data[:3] == b"\xff\xd8\xff"


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) after capping the longest side at `max_side`, truncated as FFCV's own resizer does."""
    ratio = max_side / max(width, height)
    if ratio >= 1:
        return width, height
    return int(ratio * width), int(ratio * height)


def fit_within(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """`pixels` (H x W x 3) with the longest side capped; INTER_AREA, the filter FFCV uses, so no aliasing."""
    height, width = pixels.shape[:2]
    size = fitted_size(width, height, max_side)
    if size == (width, height):
        return pixels
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def stored_pixels(data: bytes, max_side: int) -> np.ndarray:
    """uint8 H x W x 3 of a training image exactly as the shards hold it (before JPEG storage): decoded like the
    manifest decoded it, then capped."""
    return fit_within(np.asarray(decode_rgb(data).image), max_side)


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
