"""Helpers of the shard and loader tests: training manifests of hand-made images, and shards built from them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from data_support import project_params
from PIL import Image

from lic.data.schemas import MERGED_SCHEMA, write_table


def coded_image(index: int, width: int, height: int) -> np.ndarray:
    """An image whose every crop says where it comes from: red = row, green = column (mod 256), blue = `index`."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([rows % 256, columns % 256, np.full_like(rows, index)], axis=-1).astype(np.uint8)


def write_training_manifest(path: Path, images: list[Path], source: str = "synthetic") -> None:
    """A training manifest (the dedupe stage's schema) listing `images` as usable, kept training images."""
    rows = []
    for image in images:
        with Image.open(image) as opened:
            width, height = opened.size
        rows.append(
            {
                "path": image.as_posix(),
                "source": source,
                "split": "train",
                "width": width,
                "height": height,
                "mode": "RGB",
                "file_size": image.stat().st_size,
                "pixel_sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
                "license": "test",
                "status": "ok",
                "note": "",
                "dedup": "kept",
            }
        )
    write_table(pa.Table.from_pylist(rows, schema=MERGED_SCHEMA), path)


def shard_params(root: Path, **shards: object) -> dict:
    """The project's params with the training manifest and the shards under `root` (absolute paths)."""
    params = project_params()
    params["data"]["paths"]["train"] = str(root / "train.parquet")
    params["shards"].update(dir=str(root / "shards"), metrics=str(root / "shards.json"), workers=2, **shards)
    return params
