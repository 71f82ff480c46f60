"""The shard stage: the deduplicated training images become one FFCV .beton that training reads random crops from.

`data/shards/` (replaced as a whole, so its files always belong together):

- `train.beton`: sample i is one training image at native resolution, its longest side capped by
  `shards.max_resolution`; stored raw when its file is lossless, as high-quality JPEG only when its file already is
  a JPEG (the codec must not learn re-encoding artefacts; docs/data-loading.md);
- `train.parquet`: row i describes sample i (path, source, stored width and height, storage), so a loader selects
  the images whose short side allows a crop size without opening the .beton;
- `validation.parquet`: the training-manifest rows held out of the .beton, so training validates on images it
  never trains on.

Counts per source and per crop size go to `shards.metrics` (DVC metrics). This module needs no FFCV; writing the
.beton itself is `lic.data.beton`, imported only when shards are written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from lic.data.dedupe import MERGED_SCHEMA
from lic.data.manifest import read_manifest, resolve_workers, write_table
from lic.data.rgb import load_rgb
from lic.errors import LicError
from lic.io.atomic import staged_directory, write_text
from lic.io.progress import say
from lic.params import Params, Shards

BETON, METADATA, VALIDATION = "train.beton", "train.parquet", "validation.parquet"
METADATA_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # the source file, relative to the project root
        pa.field("source", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),  # as stored: after the max_resolution cap
        pa.field("height", pa.int32(), nullable=False),
        pa.field("storage", pa.string(), nullable=False),  # raw | jpeg
    ],
    metadata={"lic.shards": "1"},
)


@dataclass(frozen=True)
class ShardFiles:
    """Where the shard stage writes and the loader reads."""

    directory: Path
    metrics: Path

    @classmethod
    def of(cls, config: Shards) -> ShardFiles:
        return cls(Path(config.dir), Path(config.metrics))

    @property
    def beton(self) -> Path:
        return self.directory / BETON

    @property
    def metadata(self) -> Path:
        return self.directory / METADATA

    @property
    def validation(self) -> Path:
        return self.directory / VALIDATION


@dataclass(frozen=True)
class ShardSample:
    """One image to store: where it comes from, the size it is stored at, and whether it is stored as JPEG."""

    path: str
    source: str
    width: int
    height: int
    jpeg: bool

    @property
    def raw_bytes(self) -> int:
        return self.width * self.height * 3


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


def read_pixels(path: str | Path, max_side: int) -> np.ndarray:
    """uint8 H x W x 3 of a training image exactly as the shards hold it (before JPEG storage): decoded like the
    manifest decoded it, then capped. The writer and the PyTorch fallback loader both read images through here."""
    return fit_within(np.asarray(load_rgb(path).image), max_side)


def is_jpeg_file(path: str | Path) -> bool:
    """Whether the file is a JPEG (by content; MPO is a JPEG with extra frames), reading only its header."""
    with Image.open(path) as image:
        return image.format in {"JPEG", "MPO"}


def split_validation(rows: list[dict[str, Any]], count: int) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows): the `count` rows with the lowest pixel hashes are held out.

    A content hash is a pseudo-random pick spread over the sources that depends neither on file names nor on the
    order of the manifest, and it is reproducible without a seed.
    """
    if not 0 <= count < len(rows):
        raise LicError(f"shards.validation_images is {count}, but there are {len(rows)} training images")
    ranked = sorted(range(len(rows)), key=lambda i: (rows[i]["pixel_sha256"], rows[i]["path"]))
    held_out = set(ranked[:count])
    train = [row for i, row in enumerate(rows) if i not in held_out]
    return train, [rows[i] for i in sorted(held_out, key=lambda i: rows[i]["path"])]


def plan_samples(rows: list[dict[str, Any]], max_side: int, jpeg: bool) -> list[ShardSample]:
    """What the .beton will hold, in manifest order, computed from the manifest before any pixel is written;
    JPEG files are stored as JPEG if `jpeg`, everything else raw."""
    samples = []
    for row in rows:
        if row["width"] is None or row["height"] is None:
            raise LicError(f"{row['path']}: the training manifest has no size for it; rerun `dvc repro dedupe`")
        width, height = fitted_size(int(row["width"]), int(row["height"]), max_side)
        samples.append(ShardSample(row["path"], row["source"], width, height, jpeg and is_jpeg_file(row["path"])))
    return samples


def build_shards(params: Params) -> dict[str, Any]:
    """Write data/shards/ (the .beton, its metadata, the validation list) and the metrics; return the metrics."""
    from lic.data.beton import write_beton  # FFCV only where a .beton is written; readers of this module need none

    config = params.shards
    files = ShardFiles.of(config)
    table = read_manifest(params.data.paths.train, MERGED_SCHEMA)
    rows = [row for row in table.to_pylist() if row["status"] == "ok"]
    train, validation = split_validation(rows, config.validation_images)
    max_side = config.max_resolution
    if not 0 < max_side <= 65535:  # FFCV stores sides as 16-bit integers
        raise LicError(f"shards.max_resolution must be between 1 and 65535, not {max_side}")
    quality = config.jpeg_quality  # null: JPEG files are stored raw too (exact, several times the bytes)
    samples = plan_samples(train, max_side, jpeg=quality is not None)
    if not samples:
        raise LicError("no training images to shard: the training manifest is empty")
    with staged_directory(files.directory) as staging:
        page_size = write_beton(
            samples,
            staging / BETON,
            max_side=max_side,
            jpeg_quality=int(quality or 0),
            workers=resolve_workers(config.workers),
            stall_timeout_s=config.stall_timeout_s,
        )
        metadata = [{**asdict(s), "storage": "jpeg" if s.jpeg else "raw"} for s in samples]
        write_table(pa.Table.from_pylist(metadata, schema=METADATA_SCHEMA), staging / METADATA)
        write_table(pa.Table.from_pylist(validation, schema=MERGED_SCHEMA), staging / VALIDATION)
    metrics = shard_metrics(samples, validation, config.crop_sizes)
    metrics.update(beton_bytes=files.beton.stat().st_size, page_size=page_size)
    write_text(files.metrics, json.dumps(metrics, indent=2) + "\n")
    say(
        f"shards: {len(samples)} images in {files.beton} ({metrics['beton_bytes'] / 2**20:.1f} MiB, "
        f"{metrics['total']['jpeg']} as JPEG), {len(validation)} held out for validation; "
        + ", ".join(f"{size}: {metrics['total'][f'crop_{size}']} images" for size in config.crop_sizes)
    )
    return metrics


def shard_metrics(samples: list[ShardSample], validation: list[dict], crop_sizes: list[int]) -> dict[str, Any]:
    """Counts per source and in total: images, raw/JPEG storage, images eligible per crop size, held out."""
    held_out = Counter(row["source"] for row in validation)
    sources = sorted({s.source for s in samples} | set(held_out))
    keys = ["images", "raw", "jpeg", *(f"crop_{size}" for size in crop_sizes), "validation"]
    per_source: dict[str, dict[str, int]] = {source: dict.fromkeys(keys, 0) for source in sources}
    for sample in samples:
        counts = per_source[sample.source]
        counts["images"] += 1
        counts["jpeg" if sample.jpeg else "raw"] += 1
        for size in crop_sizes:
            counts[f"crop_{size}"] += min(sample.width, sample.height) >= size
    for source, count in held_out.items():
        per_source[source]["validation"] = count
    total = {key: sum(counts[key] for counts in per_source.values()) for key in keys}
    return {"total": total, "sources": per_source}
