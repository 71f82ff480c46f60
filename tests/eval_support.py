"""Helpers of the evaluation and registry tests: tiny real checkpoints and a small evaluation manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image

from lic.checkpoint import save_checkpoint
from lic.data.hashing import pixel_sha256
from lic.data.schemas import SCHEMA, write_table
from lic.models import build
from tests.data_support import photo

# Crops of two sample photographs, above MS-SSIM's 161-pixel floor, one side not a multiple of 64 (padding).
EVAL_CROPS = {"astronaut.png": (0, 0, 256, 192), "chelsea.png": (100, 50, 300, 250)}


def tiny_model(seed: int = 0, constant_output: float | None = None, name: str = "loclic"):
    """A small LoC-LIC (N 8/8/16, M 40, two slices; `name` mlicpp: the same network under MLIC++'s name) with random
    weights, its latent scaled up so the y stream is not empty. `constant_output` makes the synthesis return that
    grey level everywhere (the encoder and the bitstream stay the same): models of known relative quality for the
    promotion gate."""
    torch.manual_seed(seed)
    model = build(name, N=[8, 8, 16], M=40, slices=2).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(20)
        if constant_output is not None:
            model.g_s[-1][0].weight.zero_()
            model.g_s[-1][0].bias.fill_(constant_output)
    return model


def tiny_checkpoint(
    path: Path, seed: int = 0, constant_output: float | None = None, name: str = "loclic", **metadata
) -> Path:
    metadata = {"lmbda": 0.013, "metric": "mse", "step": 1, **metadata}
    return save_checkpoint(path, tiny_model(seed, constant_output, name), **metadata)


def eval_manifest(directory: Path, dataset: str = "sample") -> Path:
    """An evaluation manifest (the dedupe stage's schema) over two photo crops written as PNG in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, box in EVAL_CROPS.items():
        image = photo(name).crop(box)
        path = directory / name
        image.save(path)
        rows.append(
            {
                "path": str(path),
                "source": dataset,
                "split": "eval",
                "width": image.width,
                "height": image.height,
                "mode": "RGB",
                "file_size": path.stat().st_size,
                "pixel_sha256": pixel_sha256(image),
                "phash": "0" * 16,
                "phash_zoom": [],
                "phash256": "0" * 64,
                "phash256_zoom": [],
                "license": "test",
                "status": "ok",
                "note": "",
            }
        )
    manifest = directory / "eval.parquet"
    write_table(pa.Table.from_pylist(rows, schema=SCHEMA), manifest)
    return manifest


def eval_images(manifest_dir: Path) -> list[Image.Image]:
    return [Image.open(manifest_dir / name).convert("RGB") for name in EVAL_CROPS]
