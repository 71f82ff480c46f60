"""The manifest stage on Ray Data: tar shards and loose files described in partitions on a local Ray, the same rows
as a single process gives, bad members reported, and a run killed midway resumed with only the missing partitions.

Run as a script, this file is the manifest run the resume test kills: `python test_data_manifest.py PARAMS`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from lic.data.manifest import build_manifest, describe
from lic.params import load_params, parse_params
from tests.data_support import ROOT, project_params, tool_env

SOURCE = "synthetic"
COLUMNS = [
    "width", "height", "mode", "file_size", "pixel_sha256", "phash", "phash_zoom", "phash256", "phash256_zoom",
    "status", "note",
]  # fmt: skip


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: a random low-resolution colour field upscaled (smooth regions, distinct hashes)."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def corpus(root: Path, shards: int, per_shard: int, side: int) -> dict:
    """data/raw/<source>/ as fetch writes it: `shards` tar shards of PNG and JPEG members (one truncated, one
    not an image), eval/ loose files, source.json; returns the params pointing at it."""
    rng = np.random.default_rng(0)
    raw = root / "raw" / SOURCE
    (raw / "eval" / "set").mkdir(parents=True)
    for shard in range(shards):
        with tarfile.open(raw / f"train-{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for k in range(per_shard):
                image, fmt = smooth_image(rng, side + k % 7, side), ("PNG", "JPEG")[k % 2]
                buffer = io.BytesIO()
                image.save(buffer, fmt)
                data = buffer.getvalue()
                if shard == 1 and k == 3:
                    data = data[: len(data) // 2]  # a truncated member
                if shard == 2 and k == 5:
                    data = b"not an image"
                info = tarfile.TarInfo(f"images/{shard:02d}/{k:04d}.{fmt.lower()}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for k in range(4):
        smooth_image(rng, side, side).save(raw / "eval" / "set" / f"eval{k}.png")
    licenses = {"train/images/00/0000.png": "CC0-1.0", "eval/set/eval0.png": "public-domain"}
    (raw / "source.json").write_text(json.dumps({"active": True, "license": "test", "licenses": licenses}))
    params = project_params()
    data = params["data"]
    data["paths"].update(
        raw=str(root / "raw"), partitions=str(root / "partitions"), source_manifests=str(root / "manifests")
    )
    data["min_side"] = {"train": side // 2, "eval": side // 2}
    data["workers"] = 2
    return params


def single_process_rows(raw: Path, min_side: int, zooms: list[float], folder: Path) -> list[dict]:
    """The rows without Ray, partitions or offsets: every member extracted to a file and described in turn."""
    rows = []
    for shard in sorted(raw.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                target = folder / shard.stem / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                rows.append({**describe(str(target), None, min_side, zooms), "path": shard.as_posix(),
                             "member": member.name})  # fmt: skip
    for path in sorted((raw / "eval").rglob("*.png")):
        rows.append({**describe(str(path), None, min_side, zooms), "path": path.as_posix(), "member": None})
    return rows


def test_ray_data_manifest_equals_the_single_process_rows_on_2k_images(tmp_path: Path) -> None:
    params = corpus(tmp_path, shards=4, per_shard=500, side=64)
    out = build_manifest(parse_params(params), SOURCE)
    rows = pq.read_table(out).to_pylist()
    raw = Path(params["data"]["paths"]["raw"]) / SOURCE
    expected = single_process_rows(raw, 32, params["data"]["hash"]["zooms"], tmp_path / "extracted")
    assert len(rows) == len(expected) == 2004
    for row, want in zip(rows, expected, strict=True):
        assert (row["path"], row["member"]) == (want["path"], want["member"])
        assert {key: row[key] for key in COLUMNS} == {key: want.get(key) for key in COLUMNS}, row["member"]
    by_member = {row["member"]: row for row in rows}
    assert by_member["images/01/0003.jpeg"]["status"].startswith("skipped: truncated or corrupt")
    assert by_member["images/02/0005.jpeg"]["status"] == "skipped: not an image (unrecognised format)"
    assert sum(row["status"] == "ok" for row in rows) == 2002
    assert {row["split"] for row in rows if row["member"] is None} == {"eval"}
    assert by_member["images/00/0000.png"]["license"] == "CC0-1.0"
    assert by_member["images/00/0001.jpeg"]["license"] == "test"
    assert next(row["license"] for row in rows if row["member"] is None) == "public-domain"
    partitions = sorted(p.name for p in (tmp_path / "partitions" / SOURCE).iterdir())
    assert partitions == ["eval-loose-00000.parquet"] + [f"train-{n:05d}.parquet" for n in range(4)]


@pytest.mark.integration  # a manifest run with its own local Ray, killed with its whole process group
@pytest.mark.timeout(600)
def test_a_killed_manifest_run_resumes_with_only_the_missing_partitions(tmp_path: Path) -> None:
    params = corpus(tmp_path, shards=12, per_shard=60, side=256)
    params["data"]["workers"] = 1  # one partition at a time: the run is killed between two
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    folder = tmp_path / "partitions" / SOURCE
    run = subprocess.Popen(
        [sys.executable, "-m", "tests.test_data_manifest", str(params_path)],
        env=tool_env(),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 400
        while not (folder.exists() and list(folder.glob("*.parquet"))):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before writing a partition"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the driver and the local Ray it started
        run.wait()
    done = {path.name: path.stat().st_mtime_ns for path in folder.glob("*.parquet")}
    assert 1 <= len(done) < 13 and not (tmp_path / "manifests" / f"{SOURCE}.parquet").exists()
    for name in done:  # each written whole (a write cut by the kill leaves only a hidden .tmp, which nothing reads)
        assert pq.read_table(folder / name).num_rows in (60, 4)

    build_manifest(load_params(params_path), SOURCE)
    after = {path.name: path.stat().st_mtime_ns for path in folder.glob("*.parquet")}
    assert len(after) == 13  # 12 shards and the eval files
    assert {name for name in after if name in done and after[name] == done[name]} == set(done)  # not redone
    rows = pq.read_table(tmp_path / "manifests" / f"{SOURCE}.parquet").to_pylist()
    assert len(rows) == 12 * 60 + 4
    assert [row["member"] for row in rows[:60]] == [f"images/00/{k:04d}.{('png', 'jpeg')[k % 2]}" for k in range(60)]


if __name__ == "__main__":
    build_manifest(load_params(sys.argv[1]), SOURCE)
