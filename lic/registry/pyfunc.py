"""The registered model's pyfunc flavour: a codec MLflow can load and serve, both ways, from the lic checkpoint.

`predict` takes a table with a binary column `image` (encoded image files: PNG, JPEG, ...; any size, which is why
the signature types it as binary instead of a fixed-shape tensor) and/or a binary column `bitstream` (`.lic`
files); each row fills exactly one. An image row is compressed: the answer holds the `.lic` bitstream, its bpp,
the image size and the decoded reconstruction as PNG, so a caller sees exactly what the codec would store and
give back. A bitstream row is decompressed: the answer holds the decoded image as PNG (`reconstruction`), its
size and bpp, and no bitstream. Bad input (not an image, a damaged or foreign `.lic`, a row with both columns or
neither) is refused with a one-line message, which `mlflow models serve` answers as HTTP 400.

The model is logged as code (MLflow's "models from code": `served_model.py` calls `mlflow.models.set_model`), not
as a cloudpickle: loading it runs the shipped `lic` code and reads `model.pt` with `torch.load(weights_only=True)`,
and nothing in the model is a pickle (docs/registry.md, what is safe to load). The inference part of the `lic`
package travels with the model (code_paths), and the requirements are pinned to the versions that produced the
bitstreams: entropy coding only round-trips with the same torch and compressai builds.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image, ImageOps, UnidentifiedImageError

import lic
from lic.checkpoint import load_checkpoint
from lic.codec import bits_per_pixel, decode, encode
from lic.codec.container import size_problem
from lic.errors import LicError

CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_CODE = Path(__file__).with_name("served_model.py")  # what MLflow logs as the model
SIGNATURE = ModelSignature(
    inputs=Schema(
        [ColSpec(DataType.binary, "image", required=False), ColSpec(DataType.binary, "bitstream", required=False)]
    ),
    outputs=Schema(
        [
            ColSpec(DataType.binary, "bitstream", required=False),
            ColSpec(DataType.double, "bpp"),
            ColSpec(DataType.long, "height"),
            ColSpec(DataType.long, "width"),
            ColSpec(DataType.binary, "reconstruction"),
        ]
    ),
)
EXAMPLE_SIDE = 64  # the input_example: a small gradient image, coded in well under a second
# What inference imports: lic's codec path (torch, compressai and what `import compressai` pulls), Pillow, MLflow.
REQUIREMENTS = (
    "torch",
    "torchvision",
    "torch-geometric",
    "compressai",
    "numpy",
    "pillow",
    "pandas",
    "pyyaml",
    "mlflow",
)


# The part of `lic` that loading and predicting import, shipped with the model (code_paths) so that it loads where
# lic is not installed; the rest (data stages, training, the stack) stays out. The serving test loads the model in
# a fresh process, so a module missing here fails it.
INFERENCE_CODE = (
    "__init__.py",
    "errors.py",
    "checkpoint.py",
    "models",
    "codec",
    "registry/__init__.py",
    "registry/pyfunc.py",
)


def inference_code(directory: Path) -> Path:
    """Copy INFERENCE_CODE into `directory`/lic and return that package folder."""
    root, package = Path(lic.__file__).parent, directory / "lic"
    for name in INFERENCE_CODE:
        source, target = root / name, package / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return package


def pip_requirements() -> list[str]:
    """The installed versions, pinned; local labels (+cu130) dropped so pip can resolve them from PyPI."""
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def log_codec_model(
    name: str,
    checkpoint: Path,
    artifacts: Mapping[str, Path] | None = None,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the codec of `checkpoint` as an MLflow model named `name` in the active run (models from code, with
    the inference code, the pinned requirements, the signature and an input example); `artifacts` travel with it."""
    with tempfile.TemporaryDirectory(prefix="lic-code-") as code:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint), **{k: str(v) for k, v in (artifacts or {}).items()}},
            code_paths=[str(inference_code(Path(code)))],
            signature=SIGNATURE,
            input_example=input_example(),
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )


def input_example() -> pd.DataFrame:
    """One small PNG in the `image` column: what a request looks like, and what MLflow tries the model on."""
    ramp = np.tile(np.linspace(0, 255, EXAMPLE_SIDE).astype(np.uint8), (EXAMPLE_SIDE, 1))
    pixels = np.dstack([ramp, ramp.T, np.full_like(ramp, 128)])
    return pd.DataFrame({"image": [png(Image.fromarray(pixels))]})


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class CodecModel(PythonModel):
    """Compress images and decompress `.lic` files with a lic checkpoint."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model, _ = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        images = _column(model_input, "image")
        bitstreams = _column(model_input, "bitstream")
        rows = []
        for row, (image, bitstream) in enumerate(zip(images, bitstreams, strict=True)):
            if (image is None) == (bitstream is None):
                raise _bad_request(row, "give exactly one of `image` (an image file) and `bitstream` (a .lic file)")
            try:
                rows.append(self._compress(image) if bitstream is None else self._decompress(bitstream))
            except LicError as err:
                raise _bad_request(row, str(err)) from None
        return pd.DataFrame(rows, columns=[spec.name for spec in SIGNATURE.outputs.inputs])

    def _compress(self, data: bytes) -> dict[str, Any]:
        bitstream = encode(open_upright(data), self.model)
        return _row(bitstream, decode(bitstream, self.model), returned=bitstream)

    def _decompress(self, bitstream: bytes) -> dict[str, Any]:
        return _row(bitstream, decode(bitstream, self.model), returned=None)


def open_upright(data: bytes) -> Image.Image:
    """An image file's pixels, upright as `lic compress` codes files; its declared size is checked before the
    pixels are decoded, so a small file declaring a huge image costs nothing."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if problem := size_problem(opened.height, opened.width):
                raise LicError(problem)
            opened.load()
            return ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise LicError("`image` is not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise LicError(f"damaged or unsupported image ({err})") from None


def _column(table: pd.DataFrame, name: str) -> list[bytes | None]:
    """A column's values as bytes (None where empty); a missing column is all None."""
    if name not in table:
        return [None] * len(table)
    return [None if _empty(value) else bytes(value) for value in table[name]]


def _empty(value: Any) -> bool:
    """None, or the NaN pandas puts in a row that has no value in a column."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def _bad_request(row: int, message: str) -> MlflowException:
    return MlflowException(f"row {row}: {message}", error_code=INVALID_PARAMETER_VALUE)


def _row(bitstream: bytes, image: Image.Image, returned: bytes | None) -> dict[str, Any]:
    """One output row: the bitstream when one was made, its rate, and the decoded image as PNG."""
    return {
        "bitstream": returned,
        "bpp": bits_per_pixel(len(bitstream), image.height, image.width),
        "height": image.height,
        "width": image.width,
        "reconstruction": png(image),
    }
