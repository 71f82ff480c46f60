"""Per-source Parquet manifests: one row per raw file, describing it and saying whether it is usable.

Decoding and hashing every image is the expensive part of the data pipeline (a million images), so it runs in
worker processes and happens once per source; deduplication and later stages only read these tables. The
columns are documented in docs/datasets.md; SCHEMA is the contract with the FFCV shard stage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lic.data.fetch import read_source_info
from lic.data.hashing import perceptual_hashes, pixel_sha256
from lic.data.rgb import UnusableImageError, load_rgb
from lic.errors import LicError
from lic.io.atomic import atomic_path
from lic.io.progress import counting, say
from lic.params import Data, Params

SPLITS = ("train", "eval")
SCHEMA_VERSION = "1"
FIELDS = [
    pa.field("path", pa.string(), nullable=False),  # relative to the project root, POSIX separators
    pa.field("source", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # train | eval
    pa.field("width", pa.int32()),  # after EXIF orientation; null when the file cannot be decoded
    pa.field("height", pa.int32()),
    pa.field("mode", pa.string()),  # as stored: RGB, L, CMYK, P, RGBA, I;16, RGB;16, ...
    pa.field("file_size", pa.int64(), nullable=False),
    pa.field("pixel_sha256", pa.string()),  # of the decoded RGB pixels; null when skipped
    pa.field("phash", pa.string()),  # 64-bit DCT hash, 16 hex digits
    pa.field("phash_zoom", pa.list_(pa.string())),  # the same for each central crop in data.hash.zooms
    pa.field("license", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" or "skipped: <reason>"
    pa.field("note", pa.string(), nullable=False),  # the conversion to RGB, "" when none
]
SCHEMA = pa.schema(FIELDS, metadata={"lic.manifest": SCHEMA_VERSION})


def manifest_path(data: Data, source: str) -> Path:
    return Path(data.paths.source_manifests) / f"{source}.parquet"


def build_manifest(params: Params, source: str) -> Path:
    """Describe every file fetch@<source> placed, in parallel, and write data/manifests/sources/<source>.parquet."""
    data = params.data
    raw = Path(data.paths.raw) / source
    info = read_source_info(raw)
    files = [path for split in SPLITS for path in sorted((raw / split).rglob("*")) if path.is_file()]
    if not info["active"]:
        files = []
    license_of = info.get("licenses", {})
    tasks = [(path.as_posix(), getattr(data.min_side, path.relative_to(raw).parts[0])) for path in files]
    started = time.perf_counter()
    described = describe_all(tasks, tuple(data.hash.zooms), resolve_workers(data.workers))
    elapsed = time.perf_counter() - started
    rows = []
    for path, row in zip(files, described, strict=True):
        relative = path.relative_to(raw).as_posix()
        row.update(
            path=path.as_posix(),
            source=source,
            split=relative.split("/", 1)[0],
            license=license_of.get(relative, info["license"]),
        )
        rows.append(row)
    out = manifest_path(data, source)
    write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out)
    if files:
        say(f"{source}: described {len(files)} files in {elapsed:.1f} s ({len(files) / elapsed:.1f} images/s)")
    return out


def describe(task: tuple[str, int], zooms: Sequence[float]) -> dict[str, Any]:
    """One manifest row (without path, source, split and licence) for a file and its split's minimum side."""
    path, min_side = task
    row: dict[str, Any] = {"file_size": os.path.getsize(path), "note": ""}
    try:
        decoded = load_rgb(path)
    except UnusableImageError as err:
        width, height = err.size or (None, None)
        row.update(width=width, height=height, mode=err.mode, status=f"skipped: {err.reason}")
        return row
    image = decoded.image
    row.update(width=image.width, height=image.height, mode=decoded.mode, note=decoded.note)
    if min(image.size) < min_side:
        row["status"] = f"skipped: too small ({image.width}x{image.height}, short side < {min_side})"
        return row
    phash, zoomed = perceptual_hashes(image, zooms)
    row.update(pixel_sha256=pixel_sha256(image), phash=phash, phash_zoom=zoomed, status="ok")
    return row


def describe_all(tasks: Sequence[tuple[str, int]], zooms: tuple[float, ...], workers: int) -> list[dict]:
    """describe() over all tasks in `workers` processes, in task order, with a progress bar."""
    work = partial(describe, zooms=zooms)
    if not tasks:
        return []
    if workers == 1 or len(tasks) < 2:
        with counting() as bar:
            return list(_advancing(map(work, tasks), bar, bar.add_task("decoding and hashing", total=len(tasks))))
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = pool.map(work, tasks, chunksize=chunk)  # forks the workers now, before the bar starts its thread
        with counting() as bar:
            return list(_advancing(rows, bar, bar.add_task("decoding and hashing", total=len(tasks))))


def _advancing(rows: Iterable[dict], bar, task) -> Iterable[dict]:
    for row in rows:
        bar.advance(task)
        yield row


def resolve_workers(workers: int) -> int:
    """params' data.workers, where 0 means every CPU this process may run on."""
    return int(workers) if int(workers) > 0 else len(os.sched_getaffinity(0))


def write_table(table: pa.Table, path: Path) -> None:
    """Write Parquet atomically: a later stage never reads a half-written manifest."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: Path | str, schema: pa.Schema = SCHEMA) -> pa.Table:
    """A manifest, checked to have every column of `schema` (later stages call this, not pq.read_table)."""
    path = Path(path)
    if not path.exists():
        raise LicError(f"{path} not found: run `dvc repro` (or `lic data manifest`) first")
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise LicError(f"{path}: not a manifest of this version, missing columns {missing}")
    return table.select(schema.names).cast(schema)
