"""A folder of every kind of bad image goes through fetch, manifest and dedupe: nothing stops, each is reported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tests.data_support import encode, photo, png16, project_params, run, write_params

# file -> (status, note) expected in the manifest
EXPECTED = {
    "truncated.jpg": ("skipped: truncated or corrupt", ""),
    "corrupt.png": ("skipped: not an image", ""),
    "empty.jpg": ("skipped: empty file", ""),
    "cmyk.jpg": ("ok", "converted from CMYK"),
    "gray.png": ("ok", "converted from grayscale (L)"),
    "rgba_opaque.png": ("ok", "converted from RGBA (opaque)"),
    "rgba_transparent.png": ("skipped: transparent pixels (RGBA)", ""),
    "palette.png": ("ok", "converted from palette (P)"),
    "gray16.png": ("ok", "converted from 16-bit grayscale (I;16)"),
    "rgb16.png": ("ok", "converted from 16-bit RGB (high byte kept)"),
    "float.tif": ("skipped: unsupported mode (F)", ""),
    "small.png": ("skipped: too small (120x90, short side < 256)", ""),
    "good.jpg": ("ok", ""),
}


def _bad_folder(folder: Path) -> None:
    folder.mkdir()
    base = photo("astronaut.png").resize((300, 300))
    rng = np.random.default_rng(0)
    jpeg = encode(photo("coffee.png"), "JPEG")
    transparent = base.convert("RGBA")
    transparent.putalpha(Image.linear_gradient("L").resize(base.size))
    files = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt.png": rng.bytes(5000),
        "empty.jpg": b"",
        "cmyk.jpg": encode(photo("chelsea.png").convert("CMYK"), "JPEG"),
        "gray.png": encode(photo("camera.png").convert("L"), "PNG"),
        "rgba_opaque.png": encode(photo("retina.jpg").convert("RGBA"), "PNG"),
        "rgba_transparent.png": encode(transparent, "PNG"),
        "palette.png": encode(photo("rocket.jpg").quantize(64), "PNG"),
        "gray16.png": encode(Image.fromarray((rng.random((300, 320)) * 65535).astype(np.uint16)), "PNG"),
        "rgb16.png": png16((rng.random((280, 300, 3)) * 65535).astype(np.uint16)),
        "float.tif": encode(Image.fromarray(rng.random((300, 300)).astype(np.float32)), "TIFF"),
        "small.png": encode(base.resize((120, 90)), "PNG"),
        "good.jpg": jpeg,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)


def test_every_bad_kind_is_converted_or_skipped_with_its_reason(tmp_path: Path) -> None:
    _bad_folder(tmp_path / "bad")
    params = project_params()
    params["data"]["sources"]["bad"] = {"adapter": "local", "path": "bad", "split": "train", "license": "test"}
    params["data"]["profiles"]["bad"] = ["bad"]
    params["profile"] = "bad"
    write_params(tmp_path, params)
    lic = [sys.executable, "-m", "lic.cli", "data"]
    for command in (["fetch", "bad"], ["manifest", "bad"], ["dedupe"]):
        run(lic + command, tmp_path)  # every stage succeeds

    merged = pq.read_table(tmp_path / "data/manifests/merged.parquet").to_pylist()
    rows = {Path(row["member"] or row["path"]).name: row for row in merged}  # training images are tar members
    assert set(rows) == set(EXPECTED)
    for name, (status, note) in EXPECTED.items():
        assert rows[name]["status"].startswith(status), (name, rows[name]["status"])
        assert rows[name]["note"] == note or rows[name]["status"] != "ok", (name, rows[name]["note"])
    assert rows["rgb16.png"]["mode"] == "RGB;16" and rows["gray16.png"]["mode"] == "I;16"

    metrics = json.loads((tmp_path / "data/reports/dedup.json").read_text())
    assert metrics["total"] == metrics["sources"]["bad"]
    assert metrics["sources"]["bad"]["skipped"] == 6 and metrics["sources"]["bad"]["kept"] == 7
    assert metrics["skipped_by_reason"] == {
        "empty file": 1, "not an image": 1, "too small": 1, "transparent pixels": 1, "truncated or corrupt": 1,
        "unsupported mode": 1,
    }  # fmt: skip
    report = (tmp_path / "data/reports/dedup.md").read_text()
    for name, (status, note) in EXPECTED.items():
        reason = status.removeprefix("skipped: ") if status != "ok" else note
        if reason:
            assert f"data/raw/bad/train-00000.tar/{name} | {reason}" in report, name
    train = pq.read_table(tmp_path / "data/manifests/train.parquet").to_pylist()
    assert sorted(Path(row["member"]).name for row in train) == sorted(n for n, (s, _) in EXPECTED.items() if s == "ok")
