"""Deduplication finds planted exact and near duplicates and leaked evaluation images, and leaves distinct ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lic.data.dedupe import decide, run_dedupe
from lic.data.fetch import fetch_source
from lic.data.manifest import build_manifest
from lic.data.schemas import SCHEMA
from lic.params import parse_params
from tests.data_support import SKIMAGE_DATA, encode, photo, project_params

DISTINCT = [
    "brick.png", "camera.png", "cell.png", "clock_motion.png", "coins.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg",
]  # fmt: skip
EVAL = ["astronaut.png", "chelsea.png", "coffee.png"]


def _crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


# name in source "b" -> (kind, original in "a" or in eval, the copy's bytes)
def _planted() -> dict[str, tuple[str, str, bytes]]:
    camera, rocket, hubble = photo("camera.png"), photo("rocket.jpg"), photo("hubble_deep_field.jpg")
    retina, ihc = photo("retina.jpg"), photo("ihc.png")
    coffee, chelsea = photo("coffee.png"), photo("chelsea.png")
    return {
        "camera_recompressed.png": ("exact duplicate", "a/camera.png", encode(camera, "PNG", compress_level=1)),
        "rocket_smaller.png": ("near duplicate", "a/rocket.jpg", encode(rocket.resize((480, 320)), "PNG")),
        "hubble_q70.jpg": ("near duplicate", "a/hubble_deep_field.jpg", encode(hubble, "JPEG", quality=70)),
        "retina_crop.png": ("near duplicate", "a/retina.jpg", encode(_crop(retina, 0.03, 0.03, 0.03, 0.03), "PNG")),
        "ihc_crop.png": ("near duplicate", "a/ihc.png", encode(_crop(ihc, 0.04, 0.0, 0.0, 0.0), "PNG")),
        "coffee_copy.png": ("leakage", "eval/coffee.png", encode(coffee, "PNG")),
        "chelsea_small.jpg": ("leakage", "eval/chelsea.png", encode(chelsea.resize((420, 279)), "JPEG", quality=80)),
    }


@pytest.fixture(scope="module")
def deduped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dedupe")
    folders = {name: root / "in" / name for name in ("a", "b", "eval")}
    for name in DISTINCT:
        (folders["a"] / name).parent.mkdir(parents=True, exist_ok=True)
        (folders["a"] / name).write_bytes((SKIMAGE_DATA / name).read_bytes())
    (folders["a"] / "camera_copy.png").write_bytes((SKIMAGE_DATA / "camera.png").read_bytes())  # within source
    for name in EVAL:
        (folders["eval"] / name).parent.mkdir(parents=True, exist_ok=True)
        (folders["eval"] / name).write_bytes((SKIMAGE_DATA / name).read_bytes())
    folders["b"].mkdir(parents=True)
    for name, (_, _, data) in _planted().items():
        (folders["b"] / name).write_bytes(data)

    params = project_params()
    data = params["data"]
    data["paths"] = {key: str(root / value) for key, value in data["paths"].items()}
    data["workers"] = 2
    for name, folder in folders.items():
        split = "eval" if name == "eval" else "train"
        data["sources"][name] = {"adapter": "local", "path": str(folder), "split": split, "license": "test"}
    data["profiles"]["test"] = ["a", "b", "eval"]
    params["profile"] = "test"
    typed = parse_params(params)
    for name in folders:
        fetch_source(typed, name)
        build_manifest(typed, name)
    run_dedupe(typed)
    return root, data["paths"]


SHARD = "train-00000.tar"  # fetch packs each training source into tar shards; evaluation images stay files


def _where(row: dict) -> str:
    """A row's location as dedupe names it: the tar shard and the member, or the loose file."""
    return f"{row['path']}/{row['member']}" if row["member"] else row["path"]


def _rows(paths: dict) -> dict[str, dict]:
    raw = paths["raw"] + "/"
    return {_where(row).removeprefix(raw): row for row in pq.read_table(paths["merged"]).to_pylist()}


def test_planted_duplicates_and_leaks_are_removed_with_their_original(deduped: tuple[Path, dict]) -> None:
    _, paths = deduped
    rows = _rows(paths)
    raw = paths["raw"] + "/"
    expected = {f"b/{SHARD}/{name}": (kind, original) for name, (kind, original, _) in _planted().items()}
    expected[f"a/{SHARD}/camera_copy.png"] = ("exact duplicate", "a/camera.png")
    removed = {path: row for path, row in rows.items() if row["dedup"] not in (None, "kept")}
    assert set(removed) == set(expected)
    for path, (kind, original) in expected.items():
        source, name = original.split("/")
        original_path = f"{source}/{'eval' if source == 'eval' else SHARD}/{name}"
        assert (removed[path]["dedup"], removed[path]["duplicate_of"].removeprefix(raw)) == (kind, original_path)
    assert rows[f"a/{SHARD}/camera_copy.png"]["distance"] == 0


def test_distinct_images_are_all_kept(deduped: tuple[Path, dict]) -> None:
    _, paths = deduped
    train = pq.read_table(paths["train"]).to_pylist()
    assert sorted(Path(_where(row)).name for row in train) == sorted(DISTINCT)
    assert all(row["dedup"] == "kept" and row["split"] == "train" for row in train)
    assert sorted(Path(row["path"]).name for row in pq.read_table(paths["eval"]).to_pylist()) == EVAL


def test_report_counts_pairs_and_leakage_hits(deduped: tuple[Path, dict]) -> None:
    _, paths = deduped
    metrics = json.loads(Path(paths["metrics"]).read_text())
    assert metrics["sources"]["b"] == {
        "files": 7, "ok": 7, "converted": 0, "skipped": 0, "train": 7, "eval": 0, "kept": 0,
        "exact_duplicates": 1, "near_duplicates": 4, "leakage": 2,
    }  # fmt: skip
    assert metrics["total"]["kept"] == len(DISTINCT)
    report = Path(paths["report"]).read_text()
    assert "## Duplicates removed from training (6)" in report
    assert "## Leakage: training images matching an evaluation image (2)" in report
    assert f"b/{SHARD}/chelsea_small.jpg" in report


def _hashed_row(name: str, split: str, phash: int, phash256: np.ndarray) -> dict:
    """A manifest row with the given hashes (no zooms) and distinct pixels."""
    return {
        "path": name, "member": None, "source": split, "split": split, "width": 512, "height": 512, "mode": "RGB",
        "file_size": 1, "pixel_sha256": name, "phash": f"{phash:016x}", "phash_zoom": [],
        "phash256": np.packbits(phash256).tobytes().hex(), "phash256_zoom": [], "license": "test", "status": "ok",
        "note": "",
    }  # fmt: skip


def _flipped(bits: np.ndarray, first: int, count: int) -> np.ndarray:
    flipped = bits.copy()
    flipped[first : first + count] ^= 1
    return flipped


def test_a_pair_found_on_64_bits_counts_only_when_the_256_bit_hashes_confirm_it() -> None:
    """Distinct images whose 64-bit hashes match by chance are told from copies by the 256-bit hashes (copies
    measured 0-64 apart of 256, chance matches 92 and more: docs/datasets.md)."""
    thresholds = parse_params(project_params()).data.dedupe
    assert (thresholds.confirm.near_threshold, thresholds.confirm.leakage_threshold) == (64, 72)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, 2, size=256, dtype=np.uint8) for _ in range(2))
    rows = [
        _hashed_row("a", "train", 0x0123456789ABCDEF, x),
        _hashed_row("b", "train", 0x0123456789ABCDEF, _flipped(x, 0, 64)),  # a copy of a: confirmed
        _hashed_row("c", "train", 0x0123456789ABCDEF, _flipped(x, 100, 65)),  # a chance match of a: not
        _hashed_row("e", "eval", 0x7EDCBA9876543210, y),
        _hashed_row("f", "train", 0x7EDCBA9876543211, _flipped(y, 0, 72)),  # a leak of e: confirmed
        _hashed_row("g", "train", 0x7EDCBA9876543210, _flipped(y, 100, 73)),  # a chance match of e: not
    ]
    merged = decide(pa.Table.from_pylist(rows, schema=SCHEMA), ["train", "eval"], thresholds)
    verdicts = {row["path"]: (row["dedup"], row["duplicate_of"], row["distance"], row["distance256"])
                for row in merged.to_pylist()}  # fmt: skip
    assert verdicts == {
        "a": ("kept", None, None, None),
        "b": ("near duplicate", "a", 0, 64),
        "c": ("kept", None, None, None),
        "e": (None, None, None, None),
        "f": ("leakage", "e", 1, 72),
        "g": ("kept", None, None, None),
    }
