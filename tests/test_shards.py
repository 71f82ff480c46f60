"""The shard stage: `dvc repro shard` on the sample profile in a temporary git repo, what the .beton shards and
their index hold, the loader mixing 256 and 512 crops over them, and the FFCV writer's failure modes (a big image,
a broken file: no half shard is left)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from ffcv.reader import Reader
from PIL import Image

from lic.data.beton import CUSTOM_FIELDS
from lic.data.beton_writer import FFCV_PAGE_SIZE, ShardSample, check_pixels
from lic.data.loader import build_train_loader
from lic.data.rgb import open_bytes, stored_pixels
from lic.data.shards import build_shards
from lic.errors import LicError
from lic.params import load_params, parse_params
from tests.data_support import dvc_project, project_params, run, write_params
from tests.shard_support import coded_image, shard_params, write_training_manifest

DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pipeline whose sample profile has run up to shard (once for the module)."""
    root = dvc_project(tmp_path_factory.mktemp("shards") / "repo")
    params = project_params()
    params["loader"]["batch_size"] = {256: 2, 512: 1}  # the sample has 12 training images: small batches, more steps
    write_params(root, params)
    assert "Running stage 'shard'" in run([*DVC, "repro", "shard"], root).stdout
    return root


def stored_images(beton: Path) -> list[np.ndarray]:
    """Every sample of a .beton decoded by hand from FFCV's metadata and allocation table (RGB, H x W x 3)."""
    reader = Reader(str(beton), custom_handlers=CUSTOM_FIELDS)
    table = reader.alloc_table
    sizes = {int(ptr): int(size) for ptr, size in zip(table["ptr"], table["size"], strict=True)}
    images = []
    for field in reader.metadata["f0"]:
        data = np.fromfile(beton, np.uint8, count=sizes[int(field["data_ptr"])], offset=int(field["data_ptr"]))
        if field["mode"] == 0:  # jpg
            images.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        else:
            images.append(data.reshape(int(field["height"]), int(field["width"]), 3))
    return images


def source_pixels(project: Path, row: dict, max_side: int) -> np.ndarray:
    """The pixels the shard stage stores for an index row, decoded from its file or tar member."""
    return stored_pixels(open_bytes(project / row["path"], row["member"]), max_side)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_sample_profile_shards_hold_every_training_image_raw_or_as_its_own_format(project: Path) -> None:
    metrics = json.loads((project / "data/reports/shards.json").read_text())
    assert metrics["total"] == {
        "images": 12, "raw": 8, "jpeg": 4, "crop_256": 12, "crop_512": 9, "validation": 2,
    }  # fmt: skip
    assert metrics["page_size"] == FFCV_PAGE_SIZE  # the biggest sample image (retina, 1411 px) fits 8 MiB
    assert metrics["shards"] >= 2  # shards.shard_size_mb of the sample profile cuts its 12 images in several
    shown = json.loads(run([*DVC, "metrics", "show", "--json"], project).stdout)
    assert shown[""]["data"]["data/reports/shards.json"]["data"]["total"]["crop_512"] == 9

    folder = project / "data/shards"
    index = pq.read_table(folder / "index.parquet").to_pylist()
    train = pq.read_table(project / "data/manifests/train.parquet").to_pylist()
    assert sorted((row["path"], row["member"]) for row in index) == sorted(
        (row["path"], row["member"]) for row in train
    )
    files = sorted({row["file"] for row in index})
    assert files == [f"train-{n:05d}.beton" for n in range(metrics["shards"])] + ["validation-00000.beton"]
    assert Counter(row["split"] for row in index) == {"train": 12, "validation": 2}
    assert sorted(p.name for p in folder.iterdir()) == sorted([*files, "index.parquet", "checksums.json"])
    sums = json.loads((folder / "checksums.json").read_text())
    assert sorted(sums) == sorted([*files, "index.parquet"])
    for name, entry in sums.items():
        assert entry == {"sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(), "bytes": entry["bytes"]}
        assert entry["bytes"] == (folder / name).stat().st_size
    for file in files:
        rows = sorted((row for row in index if row["file"] == file), key=lambda row: row["row"])
        assert [row["row"] for row in rows] == list(range(len(rows)))
        assert {row["shard"] for row in rows} == {int(file[-11:-6])}
        stored = stored_images(folder / file)
        assert len(stored) == len(rows)
        for row, pixels in zip(rows, stored, strict=True):
            assert pixels.shape == (row["height"], row["width"], 3)
            assert row["bytes"] <= pixels.nbytes and (row["bytes"] == pixels.nbytes) == (row["storage"] == "raw")
            assert row["crop_256"] and row["crop_512"] == (min(pixels.shape[:2]) >= 512)
            source = source_pixels(project, row, 2048)
            name = row["member"] or row["path"]
            if row["storage"] == "raw":
                assert name.endswith(".png")
                assert np.array_equal(pixels, source), name  # lossless sources stay lossless
            else:
                assert name.endswith(".jpg")
                assert psnr(pixels, source) > 44, name  # a quality-95, 4:4:4 copy of a JPEG


def test_loader_mixes_256_and_512_crops_of_the_sample_in_the_configured_ratio(project: Path) -> None:
    params = load_params(project / "params.yaml", overrides={"shards.dir": str(project / "data/shards")})
    assert params.loader.workers == 2  # and the default's crop_mix, 256: 0.8 and 512: 0.2
    loader = build_train_loader(params.loader, params.shards, seed=7)
    assert loader.crop_sizes == (256, 512)
    assert len(loader) == 7  # 12 images / (0.8 * 2 + 0.2 * 1) crops per step, rounded up
    sizes = Counter()
    for epoch in range(12):
        seen = []
        for batch in loader.epoch(epoch):
            side = batch.shape[-1]
            assert batch.shape == ({256: 2, 512: 1}[side], 3, side, side)
            assert batch.dtype == torch.float32 and batch.is_contiguous()
            assert batch.min() >= 0.0 and batch.max() <= 1.0 and batch.std() > 0.01
            seen.append(side)
        assert seen == loader.schedule(epoch)
        sizes.update(seen)
    assert sizes[256] + sizes[512] == 84
    assert abs(sizes[512] / 84 - 0.2) < 0.1


def test_a_second_repro_does_nothing(project: Path) -> None:
    assert "Running stage" not in run([*DVC, "repro", "shard"], project).stdout


@pytest.mark.timeout(300)
def test_an_image_bigger_than_ffcv_default_page_is_stored_whole(tmp_path: Path) -> None:
    """FFCV's writer hangs forever on a sample bigger than its 8 MiB page; the page size follows the data."""
    big = tmp_path / "big.png"
    pixels = coded_image(1, 2100, 1500)  # 9.45 MB raw
    Image.fromarray(pixels).save(big, compress_level=1)
    small = tmp_path / "small.jpg"
    Image.fromarray(coded_image(2, 300, 260)).save(small, quality=80)
    write_training_manifest(tmp_path / "train.parquet", [big, small])
    params = shard_params(tmp_path, validation_images=0, max_resolution=4096, jpeg_quality=None, shard_size_mb=100)
    metrics = build_shards(parse_params(params))
    assert metrics["page_size"] == 16 * 2**20
    assert metrics["total"]["raw"] == 2  # jpeg_quality null: JPEG files are stored raw too
    stored = stored_images(tmp_path / "shards/train-00000.beton")
    assert np.array_equal(stored[0], pixels)
    assert np.array_equal(stored[1], stored_pixels(small.read_bytes(), 4096))


def test_a_broken_file_stops_the_writer_at_once_with_its_path(tmp_path: Path) -> None:
    paths = []
    for index in range(6):
        paths.append(tmp_path / f"image{index}.png")
        Image.fromarray(coded_image(index, 320, 300)).save(paths[-1])
    write_training_manifest(tmp_path / "train.parquet", paths)
    paths[3].write_bytes(paths[3].read_bytes()[:-200])  # truncated after the manifest described it
    started = time.monotonic()
    with pytest.raises(LicError, match=r"image3\.png: truncated or corrupt"):
        build_shards(parse_params(shard_params(tmp_path, validation_images=0, stall_timeout_s=800, shard_size_mb=0.5)))
    assert time.monotonic() - started < 400  # reported at once, not waited out (Ray's start included: slow if busy)
    assert sorted(p.name for p in tmp_path.iterdir() if "shards" in p.name) == []  # no half shard, no staging
    assert not _writers(after=started)  # the writer tasks, their FFCV writers and workers are gone


def _writers(after: float) -> list[psutil.Process]:
    """Processes started since `after` that write shards (Ray titles its task workers, and forks inherit it)."""
    epoch = time.time() - (time.monotonic() - after)
    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if process.info["create_time"] >= epoch - 1 and "write_shard" in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_samples_other_than_8_bit_rgb_of_the_planned_size_are_refused() -> None:
    sample = ShardSample("a.png", None, "test", width=40, height=30)
    check_pixels(np.zeros((30, 40, 3), np.uint8), sample)
    for pixels, message in [
        (np.zeros((30, 40), np.uint8), "not an 8-bit H x W x 3 image"),
        (np.zeros((30, 40, 4), np.uint8), "not an 8-bit H x W x 3 image"),
        (np.zeros((30, 40, 3), np.float32), "not an 8-bit H x W x 3 image"),
        (np.zeros((40, 30, 3), np.uint8), "decoded as 30x40, expected 40x30"),
    ]:
        with pytest.raises(LicError, match=message):
            check_pixels(pixels, sample)
