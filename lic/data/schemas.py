"""Every Parquet table the data stages hand each other, in one place: the columns are the contract between stages.

- SCHEMA: a source manifest (manifest@<source>), one row per raw file or tar member;
- MERGED_SCHEMA: the same plus the dedupe stage's decision (merged, training and evaluation manifests);
- shard_index_schema: `data/shards/index.parquet`, one row per image stored in the shard set.

Readers go through `read_table`, which checks the columns, so an old file fails with one line instead of a
KeyError deep in a stage. This module imports only pyarrow: the loader and Ray workers use it without pulling in
any stage's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lic.errors import LicError
from lic.io.atomic import atomic_path

SCHEMA_VERSION = "3"  # 2: the `member` column (images read from tar shards); 3: the 256-bit hashes
FIELDS = [
    pa.field("path", pa.string(), nullable=False),  # the file, or the tar shard holding it; relative, POSIX
    pa.field("member", pa.string()),  # the member name inside the tar shard `path`; null for a loose file
    pa.field("source", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # train | eval
    pa.field("width", pa.int32()),  # after EXIF orientation; null when the file cannot be decoded
    pa.field("height", pa.int32()),
    pa.field("mode", pa.string()),  # as stored: RGB, L, CMYK, P, RGBA, I;16, RGB;16, ...
    pa.field("file_size", pa.int64(), nullable=False),  # bytes of the file or member
    pa.field("pixel_sha256", pa.string()),  # of the decoded RGB pixels; null when skipped
    pa.field("phash", pa.string()),  # 64-bit DCT hash, 16 hex digits
    pa.field("phash_zoom", pa.list_(pa.string())),  # the same for each central crop in data.hash.zooms
    pa.field("phash256", pa.string()),  # 256-bit DCT hash, 64 hex digits: confirms the pairs the 64-bit ones find
    pa.field("phash256_zoom", pa.list_(pa.string())),
    pa.field("license", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" or "skipped: <reason>"
    pa.field("note", pa.string(), nullable=False),  # the conversion to RGB, "" when none
]
SCHEMA = pa.schema(FIELDS, metadata={"lic.manifest": SCHEMA_VERSION})

DEDUP_FIELDS = [
    pa.field("dedup", pa.string()),  # for usable training images: kept | leakage | exact duplicate | near duplicate
    pa.field("duplicate_of", pa.string()),  # location of the copy it duplicates: its path, or <tar>/<member>
    pa.field("distance", pa.int32()),  # Hamming distance to it of the 64-bit hashes (0 for identical pixels)
    pa.field("distance256", pa.int32()),  # the same of the 256-bit hashes, which confirmed the pair
]
MERGED_SCHEMA = pa.schema(FIELDS + DEDUP_FIELDS, metadata={"lic.manifest": SCHEMA_VERSION})

SHARD_FIELDS = [
    pa.field("file", pa.string(), nullable=False),  # the .beton holding the image, e.g. train-00003.beton
    pa.field("split", pa.string(), nullable=False),  # train | validation
    pa.field("shard", pa.int32(), nullable=False),  # the shard's number within its split
    pa.field("row", pa.int32(), nullable=False),  # sample index in that .beton
    pa.field("source", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # where the image came from (manifest path and member)
    pa.field("member", pa.string()),
    pa.field("width", pa.int32(), nullable=False),  # as stored: after the max_resolution cap
    pa.field("height", pa.int32(), nullable=False),
    pa.field("storage", pa.string(), nullable=False),  # raw | jpeg
    pa.field("bytes", pa.int64(), nullable=False),  # stored size in the .beton
]


def shard_index_schema(crop_sizes: Sequence[int]) -> pa.Schema:
    """index.parquet's columns: SHARD_FIELDS and one bool `crop_<size>` per crop size (the image serves it)."""
    crops = [pa.field(f"crop_{int(size)}", pa.bool_(), nullable=False) for size in crop_sizes]
    return pa.schema(SHARD_FIELDS + crops, metadata={"lic.shards": "2"})


def write_table(table: pa.Table, path: Path | str) -> None:
    """Write Parquet atomically: a later stage never reads a half-written table."""
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)


def location(table: pa.Table) -> pa.Array:
    """Where each image is, as reports and duplicate_of name it: its file, or `<tar shard>/<member>`."""
    joined = pc.binary_join_element_wise(table["path"], table["member"], "/")
    return pc.if_else(pc.is_null(table["member"]), table["path"], joined)


def read_table(path: Path | str, schema: pa.Schema, produced_by: str = "dvc repro") -> pa.Table:
    """A table checked to have every column of `schema`, in its order and types; `produced_by` is the command
    that writes it, named in the error when the file is missing."""
    path = Path(path)
    if not path.exists():
        raise LicError(f"{path} not found: run `{produced_by}` first")
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise LicError(f"{path}: written by another version of this pipeline, missing columns {missing}")
    return table.select(schema.names).cast(schema)
