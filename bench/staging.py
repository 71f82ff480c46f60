"""Staging against streaming: how fast a node gets shards out of object storage, whole or sample by sample.

A local moto S3 server holds a shard set of random bytes (SHARDS x SHARD_MB). Staging is lic.train.staging's
Stager: parallel whole-object GETs, hashed while they stream. Streaming is what a loader reading the bucket
directly would do: one ranged GET per sample at a random offset, SAMPLE_KB each (an ImageNet JPEG averages about
110 kB; a raw 256 crop's worth of a raw image is more), with the same number of threads. Both are measured on this
machine, where moto and the client share the CPUs, so the absolute numbers are a floor; the ratio is what carries
to a real bucket, whose per-request latency (10-50 ms on S3 against about 1 ms here) hurts streaming far more.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs

from bench.common import Section, table
from lic.stack import services
from lic.stack.processes import free_port, start, stop, wait_ready
from lic.train.staging import Stager, open_uri, publish

SHARDS = 4
SHARD_MB = 64
SAMPLE_KB = 110
SAMPLES = 600  # random ranged reads timed
THREADS = 8
DATASET_GB = (90, 185)  # the full profile's shard set (docs/training.md: raw vs JPEG storage)


def _shard_set(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    checksums = {}
    for index in range(SHARDS):
        path = folder / f"train-{index:05d}.beton"
        path.write_bytes(rng.bytes(SHARD_MB << 20))
        checksums[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": SHARD_MB << 20}
    (folder / "checksums.json").write_text(json.dumps(checksums))
    return folder


def _random_reads(uri: str, names: list[str]) -> tuple[float, float]:
    """Samples per second and MB/s of SAMPLES ranged GETs at random offsets, THREADS at a time."""
    filesystem, root = open_uri(uri)
    rng = np.random.default_rng(1)
    size = SAMPLE_KB << 10
    picks = [(names[rng.integers(len(names))], int(rng.integers((SHARD_MB << 20) - size))) for _ in range(SAMPLES)]

    handles = threading.local()  # a loader keeps its objects open: one HEAD per object and thread, then GETs

    def read(pick: tuple[str, int]) -> int:
        name, offset = pick
        opened = handles.__dict__.setdefault("files", {})
        if name not in opened:
            opened[name] = filesystem.open_input_file(f"{root}/{name}")
        return len(opened[name].read_at(size, offset))

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        total = sum(pool.map(read, picks))
    seconds = time.perf_counter() - started
    return SAMPLES / seconds, total / seconds / 1e6


def run() -> Section:
    with tempfile.TemporaryDirectory(prefix="lic-bench-staging-") as scratch:
        scratch = Path(scratch)
        port = free_port()
        launch = services.moto(port, scratch / "moto.log")
        process = start(launch)
        try:
            wait_ready(launch, process)
            endpoint = f"http://127.0.0.1:{port}"
            os.environ.update(services.s3_env(endpoint))  # pyarrow's credentials; the endpoint is in the URI
            filesystem = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
            filesystem.create_dir("bench")
            uri = services.ray_storage_uri("bench/shards", endpoint)
            publish(_shard_set(scratch / "shards"), uri)
            report = Stager(uri, scratch / "node", workers=THREADS).stage(
                [f"train-{i:05d}.beton" for i in range(SHARDS)]
            )
            staged_mb_s = report.bytes_downloaded / report.seconds / 1e6
            samples_s, streamed_mb_s = _random_reads(uri, [f"train-{i:05d}.beton" for i in range(SHARDS)])
        finally:
            stop([process])
    data: dict[str, Any] = {
        "shards": SHARDS,
        "shard_mb": SHARD_MB,
        "threads": THREADS,
        "staging_mb_per_s": staged_mb_s,
        "streaming_samples_per_s": samples_s,
        "streaming_mb_per_s": streamed_mb_s,
        "sample_kb": SAMPLE_KB,
    }
    rows = [
        ["staging (whole objects, hashed)", f"{staged_mb_s:.0f}", "-", f"{staged_mb_s * 1e3 / SAMPLE_KB / 1.024:.0f}"],
        ["streaming (ranged GET per sample)", f"{streamed_mb_s:.0f}", f"{samples_s:.0f}", f"{samples_s:.0f}"],
    ]
    per_node = [f"{gb} GB: {gb * 1e3 / staged_mb_s / 60:.0f} min per node alone" for gb in DATASET_GB]
    markdown = (
        table(["read pattern", "MB/s", "requests/s", f"samples/s ({SAMPLE_KB} kB each)"], rows)
        + f"\n\n{SHARDS} objects of {SHARD_MB} MB in moto on 127.0.0.1, {THREADS} threads each way. Staging is "
        f"{staged_mb_s / streamed_mb_s:.1f}x the bytes per second of streaming here. At this machine's staging rate "
        f"the whole full-profile shard set would take {'; '.join(per_node)}; with n nodes each stages 1/n."
    )
    return Section("Shard staging vs streaming from S3", markdown, data)


if __name__ == "__main__":
    section = run()
    print(section.markdown)
    print(json.dumps(section.data, indent=2))
