"""Per-source Parquet manifests: one row per raw image (a loose file or a tar shard member), describing it and
saying whether it is usable.

Decoding and hashing every image is the expensive part of the data pipeline (1.47 M images, ~6,000 core-seconds),
so it runs on Ray Data, on a local Ray or on the cluster RAY_ADDRESS names, and happens once per source; the later
stages only read these tables. The unit of work is a partition: one tar shard (`train-00000.tar`), or a group of up
to LOOSE_PER_PARTITION loose files (`eval/...`, or a `train/` folder of loose files). `map_batches` decodes,
converts and hashes a partition's images and writes its Parquet file (atomically) under
`data.paths.partitions/<source>/`; a partition already written for the same input and settings is not redone, so
a rerun after a crash processes only the missing ones. The source's manifest is then the partitions in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lic.data.fetch import read_source_info
from lic.data.hashing import perceptual_hashes, pixel_sha256
from lic.data.rgb import UnusableImageError, decode_rgb, open_bytes, tar_listing
from lic.data.schemas import SCHEMA, SCHEMA_VERSION, write_table
from lic.errors import LicError
from lic.io.progress import say
from lic.params import Data, Params

SPLITS = ("train", "eval")
LOOSE_PER_PARTITION = 1000
FINGERPRINT = b"lic.partition"  # Parquet metadata key: what a partition was made from


def manifest_path(data: Data, source: str) -> Path:
    return Path(data.paths.source_manifests) / f"{source}.parquet"


@dataclass(frozen=True)
class Partition:
    """One unit of manifest work: a tar shard (`files` empty) or a group of loose files of one split."""

    key: str  # the partition's file name without .parquet: train-00000, eval-loose-00000
    split: str
    shard: str | None  # the tar shard's path
    files: tuple[str, ...]  # the loose files' paths

    def fingerprint(self, settings: dict[str, Any]) -> str:
        """Changes when the input files (size, modification time) or the settings that shape a row change."""
        digest = hashlib.sha256(json.dumps([SCHEMA_VERSION, settings], sort_keys=True).encode())
        for path in (self.shard,) if self.shard else self.files:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def partitions(raw: Path) -> list[Partition]:
    """The partitions of a fetched source: its tar shards (`<split>-NNNNN.tar`), then its loose files by split."""
    found = []
    for shard in sorted(raw.glob("*-*.tar")):
        split = shard.name.split("-", 1)[0]
        if split in SPLITS:
            found.append(Partition(shard.stem, split, shard.as_posix(), ()))
    for split in SPLITS:
        files = [path.as_posix() for path in sorted((raw / split).rglob("*")) if path.is_file()]
        for number, start in enumerate(range(0, len(files), LOOSE_PER_PARTITION)):
            group = tuple(files[start : start + LOOSE_PER_PARTITION])
            found.append(Partition(f"{split}-loose-{number:05d}", split, None, group))
    return found


def build_manifest(params: Params, source: str) -> Path:
    """Describe every image fetch@<source> placed, on Ray Data, and write data/manifests/sources/<source>.parquet."""
    data = params.data
    raw = Path(data.paths.raw) / source
    info = read_source_info(raw)
    work = partitions(raw) if info["active"] else []
    settings = {"min_side": {split: getattr(data.min_side, split) for split in SPLITS}, "zooms": data.hash.zooms}
    folder = Path(data.paths.partitions) / source
    missing = [part for part in work if not _is_done(folder / f"{part.key}.parquet", part.fingerprint(settings))]
    if missing:
        started = time.perf_counter()
        done = describe_partitions(missing, folder, source, info, settings, data.workers)
        elapsed = time.perf_counter() - started
        say(
            f"{source}: described {done} images of {len(missing)} partitions in {elapsed:.1f} s "
            f"({done / elapsed:.1f} images/s); {len(work) - len(missing)} partitions were already done"
        )
    tables = [pq.read_table(folder / f"{part.key}.parquet", schema=SCHEMA) for part in work]
    out = manifest_path(data, source)
    write_table(
        pa.concat_tables(tables).replace_schema_metadata(SCHEMA.metadata) if tables else SCHEMA.empty_table(), out
    )
    return out


def _is_done(path: Path, fingerprint: str) -> bool:
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (FileNotFoundError, pa.ArrowInvalid):  # absent, or a torn file from before atomic writes
        return False
    return metadata.get(FINGERPRINT) == fingerprint.encode()


def describe_partitions(
    work: Sequence[Partition], folder: Path, source: str, info: dict[str, Any], settings: dict[str, Any], workers: int
) -> int:
    """Ray Data over the partitions: each map_batches call describes one and writes its Parquet file; returns the
    number of images described. `workers` caps the partitions described at once (0: as many as Ray has CPUs)."""
    import ray

    from lic.data.engine import ray_session

    rows = [
        {
            **asdict(part),
            "shard": part.shard or "",
            "files": list(part.files),
            "fingerprint": part.fingerprint(settings),
        }
        for part in work
    ]  # "" for no shard: a null would reach the batch as NaN
    context = {"folder": str(folder), "source": source, "settings": settings}
    context["license"], context["licenses"] = info["license"], info.get("licenses", {})
    with ray_session():
        ray.data.DataContext.get_current().enable_progress_bars = False  # one line per partition instead
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _describe_batch,
            batch_size=1,
            fn_kwargs=context,
            num_cpus=1,
            concurrency=workers if workers > 0 else None,
        )
        described = 0
        try:
            for result in dataset.iter_rows():
                described += int(result["images"])
                say(f"{source}: {result['key']}: {result['images']} images, {result['skipped']} skipped")
        except ray.exceptions.RayError as err:
            raise LicError(f"manifest@{source} stopped: {_root_cause(err)}") from None
    return described


def _root_cause(err: BaseException) -> str:
    """The LicError (or else the innermost exception) behind Ray's wrappers of a failed task."""
    seen = err
    while True:
        cause = getattr(seen, "cause", None) or seen.__cause__
        if isinstance(seen, LicError) or cause is None or cause is seen:
            return str(seen) if isinstance(seen, LicError) else f"{type(seen).__name__}: {seen}"
        seen = cause


def _describe_batch(batch: dict[str, np.ndarray], **context: Any) -> dict[str, list]:
    """map_batches' function: describe each partition of the batch and write it; one summary row per partition."""
    summary: dict[str, list] = {"key": [], "images": [], "skipped": []}
    for i, key in enumerate(batch["key"]):
        shard = batch["shard"][i]
        files = tuple(str(file) for file in batch["files"][i])
        part = Partition(str(key), str(batch["split"][i]), str(shard) or None, files)
        table = describe_partition(
            part, context["source"], context["license"], context["licenses"], context["settings"]
        )
        metadata = {**SCHEMA.metadata, FINGERPRINT: str(batch["fingerprint"][i]).encode()}
        write_table(table.replace_schema_metadata(metadata), Path(context["folder"]) / f"{key}.parquet")
        summary["key"].append(str(key))
        summary["images"].append(len(table))
        summary["skipped"].append(sum(status != "ok" for status in table["status"].to_pylist()))
    return summary


def describe_partition(
    part: Partition, source: str, license: str, licenses: dict[str, str], settings: dict[str, Any]
) -> pa.Table:
    """The manifest rows of one partition, in archive (or path) order."""
    min_side, zooms = int(settings["min_side"][part.split]), tuple(settings["zooms"])
    rows = []
    if part.shard is None:
        for path in part.files:
            row = describe(path, None, min_side, zooms)
            rows.append(_complete(row, path, None, source, part.split, licenses, license))
    else:
        listing = tar_listing(part.shard)
        for member, (_, size) in listing.members.items():
            row = describe(part.shard, member, min_side, zooms, size)
            rows.append(_complete(row, part.shard, member, source, part.split, licenses, license))
        if listing.damaged_at is not None:  # a corrupt header ends the listing: report what could not be read
            size = os.path.getsize(part.shard) - listing.damaged_at
            row = {"file_size": size, "note": "", "status": f"skipped: corrupt archive (unreadable after byte "
                   f"{listing.damaged_at}, {size} bytes not listed)"}  # fmt: skip
            rows.append(_complete(row, part.shard, None, source, part.split, licenses, license))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _complete(row, path, member, source, split, licenses, license) -> dict[str, Any]:
    """A described row with where it comes from and its licence (source.json keys them `<split>/<name>`)."""
    key = f"{split}/{member}" if member is not None else _split_relative(path, split)
    row.update(path=path, member=member, source=source, split=split, license=licenses.get(key, license))
    return row


def _split_relative(path: str, split: str) -> str:
    """`data/raw/sample/eval/skimage/astronaut.png` -> `eval/skimage/astronaut.png` (the licence key)."""
    parts = Path(path).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index(split) :]) if split in parts else path


def describe(
    path: str, member: str | None, min_side: int, zooms: Sequence[float], size: int | None = None
) -> dict[str, Any]:
    """One manifest row (without path, member, source, split and licence) for an image and its split's minimum
    side: its size, mode and hashes, or why it is skipped."""
    row: dict[str, Any] = {"file_size": os.path.getsize(path) if size is None else size, "note": ""}
    try:
        decoded = decode_rgb(open_bytes(path, member))
    except UnusableImageError as err:
        width, height = err.size or (None, None)
        row.update(width=width, height=height, mode=err.mode, status=f"skipped: {err.reason}")
        return row
    image = decoded.image
    row.update(width=image.width, height=image.height, mode=decoded.mode, note=decoded.note)
    if min(image.size) < min_side:
        row["status"] = f"skipped: too small ({image.width}x{image.height}, short side < {min_side})"
        return row
    row.update(pixel_sha256=pixel_sha256(image), **perceptual_hashes(image, zooms), status="ok")
    return row
