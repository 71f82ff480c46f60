"""The small parts the data stages rely on: atomic placement, safe extraction, exact Hamming search."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lic.data.layout import Placement
from lic.data.neighbours import Hashes, near_pairs
from lic.data.sources.vimeo import frame_names
from lic.errors import LicError
from lic.io.atomic import staged_directory
from tests.data_support import archive_limits


def test_a_failed_fetch_keeps_the_previous_tree_and_leaves_no_staging(tmp_path: Path) -> None:
    dest = tmp_path / "coco"
    with staged_directory(dest) as staging:
        (staging / "a.png").write_bytes(b"old")
    with pytest.raises(RuntimeError), staged_directory(dest) as staging:
        (staging / "half.png").write_bytes(b"new")
        raise RuntimeError("network gone")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]
    assert [p.name for p in dest.iterdir()] == ["a.png"]


def test_extraction_refuses_members_outside_the_destination(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("../../escape.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "evil.tar").write_bytes(buffer.getvalue())
    place = Placement(tmp_path / "out", 2**20, archive_limits())
    with pytest.raises(LicError, match="outside"):
        place.add_archive("eval", tmp_path / "evil.tar", lambda name: name)
    assert not (tmp_path.parent / "escape.png").exists()


def test_near_pairs_equals_brute_force_across_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lic.data.neighbours.TILE", 64)  # several tiles, diagonal and off-diagonal
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, size=150, dtype=np.uint64)
    flips = np.array([1 << int(b) for b in rng.integers(0, 64, size=150)], dtype=np.uint64)
    full = np.concatenate([base, base[:50] ^ flips[:50]])  # 50 planted near copies
    zoom = full ^ np.array([1 << int(b) for b in rng.integers(0, 64, size=200)], dtype=np.uint64)
    hexes = [f"{int(v):016x}" for v in full]
    hashes = Hashes.from_hex(hexes, [[f"{int(v):016x}"] for v in zoom])
    i, j, d = near_pairs(hashes, None, 12)
    found = {(a, b): c for a, b, c in zip(i.tolist(), j.tolist(), d.tolist(), strict=True)}

    def distance(x: int, y: int) -> int:
        pairs = [(full[x], full[y]), (full[x], zoom[y]), (zoom[x], full[y])]
        return min(bin(int(p) ^ int(q)).count("1") for p, q in pairs)

    expected = {(x, y): distance(x, y) for x in range(200) for y in range(x + 1, 200) if distance(x, y) <= 12}
    assert found == expected
    assert len(expected) >= 50


def test_vimeo_frames_are_evenly_spaced() -> None:
    assert frame_names(1) == {"im4.png"}
    assert frame_names(3) == {"im1.png", "im4.png", "im7.png"}
    assert len(frame_names(7)) == 7
    with pytest.raises(LicError):
        frame_names(8)
