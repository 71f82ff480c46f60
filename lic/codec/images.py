"""From image files and arrays to the codec's pixels, and back.

The models code 8-bit RGB. Everything else is brought to that or refused with a clear error:
- grayscale is coded as RGB with the gray value in all three channels and decoded back to grayscale by averaging
  the three decoded channels (the encoder saw one value three times, so their mean is the least-squares
  estimate of it); the file records the mode so decode() gives an "L" image back;
- palette and bilevel images, CMYK, YCbCr, LAB and HSV are converted to RGB (or L);
- 16-bit images are reduced to 8 bits with an ImageWarning: RGB keeps the high byte (Pillow reads it so),
  grayscale is rounded to the nearest 8-bit level (as the data stages do, lic/data/rgb.py);
- an alpha channel is dropped, with an ImageWarning;
- EXIF orientation is applied when a file is opened (open_image), so photos are coded upright;
- a file's declared size is checked before its pixels are decoded (a small PNG can declare gigapixels), and
  Pillow's DecompressionBombWarning counts as an error, as in the data stages;
- of an animated GIF or a multi-page TIFF the first frame is coded, with an ImageWarning (a .lic file holds one
  image; refusing would stop a folder for what a conversion can say in one line).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from lic.codec.container import MAX_PIXELS, size_problem
from lic.errors import LicError

_TO_RGB = {"P": "RGB", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_ALPHA = {"RGBA": "RGB", "RGBa": "RGB", "LA": "L", "La": "L", "PA": "RGB"}


class ImageWarning(UserWarning):
    """An input image was changed to fit the codec (alpha dropped, 16 bits reduced to 8, frames after the first
    left out)."""


def open_image(path: Path | str | bytes) -> Image.Image:
    """Read an image file (or its bytes: standard input), apply its EXIF orientation and bring it to RGB or L (see
    the module docstring)."""
    if isinstance(path, bytes):
        path, source = Path("standard input"), io.BytesIO(path)
    else:
        path = source = Path(path)
        if not path.exists():
            raise LicError(f"{path}: no such file")
        if path.is_dir():
            raise LicError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if problem := size_problem(image.height, image.width):  # before load(): the size is declared
                    raise LicError(f"{path}: {problem}")
                sixteen_bit = any(";16" in str(tile.args) for tile in image.tile)
                frames = getattr(image, "n_frames", 1)
                image.load()
                upright = ImageOps.exif_transpose(image)
    except PermissionError as err:
        raise LicError(f"{path}: cannot read ({err.strerror})") from err
    except UnidentifiedImageError as err:
        raise LicError(f"{path}: not an image file Pillow can read") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise LicError(f"{path}: larger than the limit of {MAX_PIXELS:,} pixels (Pillow: {err})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise LicError(f"{path}: damaged or unsupported image ({err})") from err
    if frames > 1:
        warnings.warn(f"{path.name}: {frames} frames; only the first is coded", ImageWarning, stacklevel=2)
    if sixteen_bit and upright.mode in ("RGB", "RGBA"):  # Pillow already kept the high bytes
        warnings.warn(f"{path.name}: 16-bit image reduced to 8 bits", ImageWarning, stacklevel=2)
    return to_codec_mode(upright, path.name)


def to_codec_mode(image: Image.Image, name: str = "image") -> Image.Image:
    """The same image in mode RGB or L, converted as the module docstring says."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA:
        warnings.warn(f"{name}: alpha channel dropped", ImageWarning, stacklevel=3)
        return image.convert(_ALPHA[mode])
    if mode in _TO_RGB:
        return image.convert(_TO_RGB[mode])
    if mode.startswith("I;16") or mode == "I":
        warnings.warn(f"{name}: 16-bit image reduced to 8 bits", ImageWarning, stacklevel=3)
        values = np.asarray(image).astype(np.float64).clip(0, 65535)
        return Image.fromarray(np.rint(values / 257).astype(np.uint8), "L")
    raise LicError(f"{name}: unsupported colour mode {mode} (lic codes 8-bit RGB and grayscale)")


def to_pixels(image: Image.Image | np.ndarray) -> tuple[np.ndarray, str]:
    """(H x W x 3 uint8 array, "RGB" or "L") from a PIL image or an H x W x 3 / H x W uint8 array."""
    if isinstance(image, Image.Image):
        image = to_codec_mode(image)
        mode, array = image.mode, np.asarray(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise LicError(f"expected a uint8 array, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise LicError(f"expected an H x W x 3 (RGB) or H x W (grayscale) array, got shape {image.shape}")
        mode, array = ("L" if image.ndim == 2 else "RGB"), image
    else:
        raise LicError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array), mode


def to_tensor(pixels: np.ndarray) -> Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0).float().div(255)


def from_tensor(x: Tensor, mode: str) -> Image.Image:
    """1 x 3 x H x W in [0, 1] -> an 8-bit PIL image in `mode` ("L": the mean of the three channels)."""
    x = x[0].float().cpu()
    if mode == "L":
        return Image.fromarray(x.mean(0).mul(255).round().to(torch.uint8).numpy(), "L")
    return Image.fromarray(x.permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy(), "RGB")
