"""The registered model's pyfunc flavour: a codec that MLflow can load and serve, built from the lic checkpoint.

`predict` takes a table with one column, `image`: encoded image files (PNG, JPEG, ...; any size, which is why
the signature types the column as binary instead of a fixed-shape tensor). For each row it returns the `.lic`
bitstream, its bpp, the image size and the decoded reconstruction as PNG, so a caller sees exactly what the codec
would store and give back. `load_context` rebuilds the network from the checkpoint artifact (its registry name,
config and weights, CDF tables included), the same file `lic pull` hands to the codec CLI.

The inference part of the `lic` package travels with the model (code_paths), and the requirements are pinned to
the versions that produced the bitstreams: entropy coding only round-trips with the same torch and compressai
builds.
"""

from __future__ import annotations

import io
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image, ImageOps

import lic
from lic.checkpoint import load_checkpoint
from lic.codec import bits_per_pixel, decode, encode

CHECKPOINT_ARTIFACT = "checkpoint"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, "image")]),
    outputs=Schema(
        [
            ColSpec(DataType.binary, "bitstream"),
            ColSpec(DataType.double, "bpp"),
            ColSpec(DataType.long, "height"),
            ColSpec(DataType.long, "width"),
            ColSpec(DataType.binary, "reconstruction"),
        ]
    ),
)
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


class CodecModel(PythonModel):
    """Compress and decompress images with a lic checkpoint."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model, _ = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        rows = []
        for data in model_input["image"]:
            with Image.open(io.BytesIO(bytes(data))) as opened:
                image = ImageOps.exif_transpose(opened)  # upright, as `lic compress` codes files
            bitstream = encode(image, self.model)
            reconstruction = decode(bitstream, self.model)
            png = io.BytesIO()
            reconstruction.save(png, "PNG")
            rows.append(
                {
                    "bitstream": bitstream,
                    "bpp": bits_per_pixel(len(bitstream), image.height, image.width),
                    "height": image.height,
                    "width": image.width,
                    "reconstruction": png.getvalue(),
                }
            )
        return pd.DataFrame(rows, columns=[spec.name for spec in SIGNATURE.outputs.inputs])
