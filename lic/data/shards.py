"""The shard stage: the deduplicated training images become a set of FFCV .beton shards that training reads.

`data/shards/` (written in a staging folder and renamed into place whole, so its files always belong together):

- `train-00000.beton`, `train-00001.beton`, ...: about `shards.shard_size_mb` MB of stored images each, written by
  Ray tasks in parallel (one task per shard). Sample i of a shard is one image at native resolution, its longest
  side capped by `shards.max_resolution`; stored raw when its file is lossless, as high-quality JPEG only when its
  file already is a JPEG (the codec must not learn re-encoding artefacts; docs/data-loading.md);
- `validation-00000.beton`: the training images held out for validation, so training never reads `data/raw`;
- `index.parquet`: one row per stored image (lic.data.schemas.shard_index_schema): which file and row, where it
  came from, its stored size and storage, and the crop sizes it serves; a loader picks shards and images from it
  without opening a .beton;
- `checksums.json`: SHA-256 and size of every other file, so a node that copied the set can verify it.

Counts per source and per crop size go to `shards.metrics` (DVC metrics). FFCV and Ray are imported only when
shards are written; readers of this module (the loader) need neither.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lic.data.schemas import MERGED_SCHEMA, SHARD_FIELDS, read_table, shard_index_schema, write_table
from lic.errors import LicError
from lic.io.atomic import staged_directory, write_text
from lic.io.progress import say
from lic.params import Params, Shards

TRAIN, VALIDATION = "train", "validation"
INDEX, CHECKSUMS = "index.parquet", "checksums.json"
MAX_SIDE_LIMIT = 65535  # FFCV stores sides as 16-bit integers


def shard_file(split: str, number: int) -> str:
    """The file name of shard `number` of `split`: train-00003.beton."""
    return f"{split}-{number:05d}.beton"


@dataclass(frozen=True)
class ShardFiles:
    """Where the shard stage writes and the loader reads."""

    directory: Path
    metrics: Path

    @classmethod
    def of(cls, config: Shards) -> ShardFiles:
        return cls(Path(config.dir), Path(config.metrics))

    @property
    def index(self) -> Path:
        return self.directory / INDEX

    def read_index(self) -> pa.Table:
        """index.parquet's shared columns (the crop columns depend on shards.crop_sizes and are not needed to
        read: eligibility follows from the stored sizes)."""
        return read_table(self.index, pa.schema(SHARD_FIELDS), "dvc repro shard` (or `lic data shard")


def shard_size_bytes(config: Shards, profile: str) -> int:
    """shards.shard_size_mb (one size, or the active profile's), in bytes."""
    size = config.shard_size_mb
    if isinstance(size, dict):
        if profile not in size:
            raise LicError(f"shards.shard_size_mb = {dict(size)}: no size for profile {profile!r}")
        size = size[profile]
    return int(size * 2**20)


def split_validation(table: pa.Table, count: int) -> tuple[pa.Table, pa.Table]:
    """(training rows, validation rows): the `count` rows with the lowest pixel hashes are held out.

    A content hash is a pseudo-random pick spread over the sources that depends neither on file names nor on the
    order of the manifest, and it is reproducible without a seed. Validation rows are in path order.
    """
    if not 0 <= count < len(table):
        raise LicError(f"shards.validation_images is {count}, but there are {len(table)} training images")
    keys = [("pixel_sha256", "ascending"), ("path", "ascending"), ("member", "ascending")]
    held_out = np.zeros(len(table), dtype=bool)
    held_out[pc.sort_indices(table, sort_keys=keys)[:count].to_numpy()] = True
    validation = table.filter(pa.array(held_out))
    validation = validation.take(pc.sort_indices(validation, sort_keys=keys[1:]))
    return table.filter(pa.array(~held_out)), validation


def plan_shards(table: pa.Table, max_side: int, shard_bytes: int) -> list[pa.Table]:
    """The manifest rows cut into consecutive shards of about `shard_bytes` stored bytes each, with the stored
    (capped) width and height. Planned from the manifest alone, before any pixel is read: a raw image costs
    3 bytes per pixel, a JPEG file about its own size (a quality-95 re-encode of it is of that order)."""
    if not len(table):
        return []
    width = table["width"].to_numpy(zero_copy_only=False).astype(np.int64)
    height = table["height"].to_numpy(zero_copy_only=False).astype(np.int64)
    ratio = max_side / np.maximum(width, height)
    capped = ratio < 1
    width = np.where(capped, (ratio * width).astype(np.int64), width)  # truncated, as FFCV's resizer does
    height = np.where(capped, (ratio * height).astype(np.int64), height)
    name = pc.utf8_lower(pc.coalesce(table["member"], table["path"]))
    jpeg_name = pc.or_(pc.ends_with(name, ".jpg"), pc.ends_with(name, ".jpeg")).to_numpy(zero_copy_only=False)
    estimate = np.where(jpeg_name, table["file_size"].to_numpy(), width * height * 3)
    start = np.cumsum(estimate) - estimate
    _, shard = np.unique(start // shard_bytes, return_inverse=True)  # consecutive numbers, no empty shard
    planned = pa.table(
        {
            "path": table["path"],
            "member": table["member"],
            "source": table["source"],
            "width": pa.array(width, pa.int32()),
            "height": pa.array(height, pa.int32()),
        }
    )
    bounds = np.flatnonzero(np.diff(shard)) + 1
    return [planned.slice(a, b - a) for a, b in zip([0, *bounds], [*bounds, len(table)], strict=True)]


def write_shard(
    planned: pa.Table, path: str, *, max_side: int, jpeg_quality: int | None, workers: int, stall_timeout_s: float
) -> dict[str, Any]:
    """Write one .beton (run as a Ray task) and say what each sample became: page size, storage and bytes."""
    from lic.data.beton import StoredSamples
    from lic.data.beton_writer import ShardSample, write_beton

    samples = [ShardSample(**row) for row in planned.to_pylist()]
    page_size = write_beton(
        samples, Path(path), max_side=max_side, jpeg_quality=jpeg_quality, workers=workers,
        stall_timeout_s=stall_timeout_s,
    )  # fmt: skip
    stored = StoredSamples(path)
    storage = ["jpeg" if stored.is_jpeg(row) else "raw" for row in range(len(stored))]
    # hashed here, on the node that wrote it and while it is in the page cache: the driver hashing every shard
    # after the fact re-read the whole set from disk (17.7 GB at 200k images), one file at a time
    checksum = file_checksum(Path(path))
    return {"page_size": page_size, "storage": storage, "bytes": stored.bytes.tolist(), "checksum": checksum}


def build_shards(params: Params) -> dict[str, Any]:
    """Write data/shards/ (the .beton shards, index.parquet, checksums.json) and the metrics; return the metrics."""
    from lic.data.engine import ray_session

    config = params.shards
    files = ShardFiles.of(config)
    manifest = read_table(params.data.paths.train, MERGED_SCHEMA, "dvc repro dedupe")
    manifest = manifest.filter(pc.equal(manifest["status"], "ok"))
    if pc.any(pc.or_(pc.is_null(manifest["width"]), pc.is_null(manifest["height"]))).as_py():
        raise LicError("the training manifest has images without a size; rerun `dvc repro dedupe`")
    train, validation = split_validation(manifest, config.validation_images)
    max_side = config.max_resolution
    if not 0 < max_side <= MAX_SIDE_LIMIT:
        raise LicError(f"shards.max_resolution must be between 1 and {MAX_SIDE_LIMIT}, not {max_side}")
    if not len(train):
        raise LicError("no training images to shard: the training manifest is empty")
    shard_bytes = shard_size_bytes(config, params.profile)
    plan = [(TRAIN, n, part) for n, part in enumerate(plan_shards(train, max_side, shard_bytes))]
    plan += [(VALIDATION, n, part) for n, part in enumerate(plan_shards(validation, max_side, shard_bytes))]
    options = {
        "max_side": max_side,
        "jpeg_quality": config.jpeg_quality,  # null: JPEG files are stored raw too (exact, several times the bytes)
        "workers": config.workers,
        "stall_timeout_s": config.stall_timeout_s,
    }
    crop_sizes = list(config.crop_sizes)
    started = time.perf_counter()
    with staged_directory(files.directory) as staging, ray_session():
        results = _run_writers(plan, staging, options)
        index = _index(plan, results, crop_sizes)
        write_table(index, staging / INDEX)
        sums = {shard_file(split, n): result["checksum"] for (split, n, _), result in zip(plan, results, strict=True)}
        sums[INDEX] = file_checksum(staging / INDEX)
        write_text(staging / CHECKSUMS, json.dumps(sums, indent=2, sort_keys=True) + "\n")
    elapsed = time.perf_counter() - started
    metrics = shard_metrics(index, crop_sizes)
    metrics.update(
        shards=sum(split == TRAIN for split, _, _ in plan),
        beton_bytes=sum(files.directory.joinpath(shard_file(s, n)).stat().st_size for s, n, _ in plan),
        page_size=max(result["page_size"] for result in results),
    )
    write_text(files.metrics, json.dumps(metrics, indent=2) + "\n")
    say(
        f"shards: {metrics['total']['images']} images in {metrics['shards']} shards of {files.directory} "
        f"({metrics['beton_bytes'] / 2**20:.1f} MiB, {metrics['total']['jpeg']} as JPEG) in {elapsed:.1f} s, "
        f"{metrics['total']['validation']} held out for validation; "
        + ", ".join(f"{size}: {metrics['total'][f'crop_{size}']} images" for size in crop_sizes)
    )
    return metrics


def _run_writers(plan: list[tuple[str, int, pa.Table]], staging: Path, options: dict[str, Any]) -> list[dict]:
    """One Ray task per shard, as many at once as the cluster has CPUs for; the first failure stops the rest
    (their writers' process trees are killed by write_beton's cleanup) and is raised as that one LicError."""
    import ray

    task = ray.remote(write_shard).options(num_cpus=options["workers"], max_retries=0)
    running = {
        task.remote(part, str(staging / shard_file(split, number)), **options): i
        for i, (split, number, part) in enumerate(plan)
    }
    results: list[dict | None] = [None] * len(plan)
    pending = list(running)
    try:
        while pending:
            (ready,), pending = ray.wait(pending, num_returns=1)
            results[running[ready]] = ray.get(ready)
            split, number, part = plan[running[ready]]
            say(f"shards: wrote {shard_file(split, number)} ({len(part)} images)")
    except ray.exceptions.RayTaskError as err:
        for ref in pending:
            ray.cancel(ref)  # not forced: the task's cleanup stops its FFCV writer
        ray.wait(pending, num_returns=len(pending), timeout=60)
        cause = err.cause
        raise LicError(str(cause) if isinstance(cause, LicError) else f"a shard writer failed: {cause}") from None
    return results


def _index(plan: list[tuple[str, int, pa.Table]], results: list[dict], crop_sizes: list[int]) -> pa.Table:
    """index.parquet: the planned rows of every shard with what the writer stored."""
    parts = []
    for (split, number, part), result in zip(plan, results, strict=True):
        rows = len(part)
        columns = {
            "file": pa.array([shard_file(split, number)] * rows, pa.string()),
            "split": pa.array([split] * rows, pa.string()),
            "shard": pa.array(np.full(rows, number), pa.int32()),
            "row": pa.array(np.arange(rows), pa.int32()),
            **{name: part[name] for name in ("source", "path", "member", "width", "height")},
            "storage": pa.array(result["storage"], pa.string()),
            "bytes": pa.array(result["bytes"], pa.int64()),
        }
        short_side = np.minimum(part["width"].to_numpy(), part["height"].to_numpy())
        columns.update({f"crop_{size}": pa.array(short_side >= size) for size in crop_sizes})
        parts.append(pa.table(columns, schema=shard_index_schema(crop_sizes)))
    return pa.concat_tables(parts)


def file_checksum(path: Path) -> dict[str, Any]:
    """A checksums.json entry: the file's SHA-256 and size (checksums.json lists every other file of the set)."""
    with open(path, "rb") as f:
        return {"sha256": hashlib.file_digest(f, "sha256").hexdigest(), "bytes": path.stat().st_size}


def shard_metrics(index: pa.Table, crop_sizes: list[int]) -> dict[str, Any]:
    """Counts per source and in total: images (training), raw/JPEG storage, images per crop size, held out."""
    keys = ["images", "raw", "jpeg", *(f"crop_{size}" for size in crop_sizes), "validation"]
    per_source: dict[str, Counter] = {}
    columns = index.select(["split", "source", "storage", *(f"crop_{size}" for size in crop_sizes)]).to_pydict()
    for i, source in enumerate(columns["source"]):
        counts = per_source.setdefault(source, Counter())
        if columns["split"][i] == VALIDATION:
            counts["validation"] += 1
            continue
        counts["images"] += 1
        counts[columns["storage"][i]] += 1
        for size in crop_sizes:
            counts[f"crop_{size}"] += columns[f"crop_{size}"][i]
    sources = {source: {key: int(per_source[source][key]) for key in keys} for source in sorted(per_source)}
    total = {key: sum(counts[key] for counts in sources.values()) for key in keys}
    return {"total": total, "sources": sources}
