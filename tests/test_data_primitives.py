"""The small parts the data stages rely on: atomic placement, safe extraction, Hamming range search with faiss."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lic.data import neighbours
from lic.data.layout import Placement
from lic.data.neighbours import Hashes, SearchPlan, codes, near_pairs, pair_distances
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


THRESHOLD = 8
EXACT = SearchPlan(exact_max=10**9, nlist=0, nprobe=1)  # the exact index at any size


def _planted_hashes(rng: np.random.Generator, count: int, planted: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random 64-bit hashes (n x 8 bytes) whose last `planted` are copies of earlier ones with 0 to
    THRESHOLD + 3 bits flipped, and one zoom hash per image a few bits off its full hash."""
    full = rng.integers(0, 256, size=(count, 8), dtype=np.uint8)
    originals = rng.choice(count - planted, size=planted, replace=False)
    for row, original in zip(range(count - planted, count), originals, strict=True):
        flips = rng.choice(64, size=int(rng.integers(0, THRESHOLD + 4)), replace=False)
        bits = np.unpackbits(full[original])
        bits[flips] ^= 1
        full[row] = np.packbits(bits)
    zoom = full.copy()
    zoom[:, 0] ^= rng.integers(0, 256, size=count, dtype=np.uint8) & 0b111  # up to 3 bits off
    return full, zoom


def _brute_force(a: list[np.ndarray], b: list[np.ndarray], within: bool) -> dict[tuple[int, int], int]:
    """Every pair within THRESHOLD by exhaustive float matrix products (bits as +-1: dot = 64 - 2 * Hamming), the
    smallest distance over full-full, full-zoom and zoom-full; a different method from faiss's popcounts."""
    signs = [[np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1 for codes in side] for side in (a, b)]
    (a_full, a_zoom), (b_full, b_zoom) = signs
    pairs = {}
    for start in range(0, len(a_full), 4096):
        rows = slice(start, start + 4096)
        dots = np.maximum.reduce([a_full[rows] @ b_full.T, a_full[rows] @ b_zoom.T, a_zoom[rows] @ b_full.T])
        distance = np.rint((64 - dots) / 2).astype(np.int64)
        i, j = np.nonzero(distance <= THRESHOLD)
        for x, y in zip((i + start).tolist(), j.tolist(), strict=True):
            if not within or x < y:
                pairs[(x, y)] = int(distance[x - start, y])
    return pairs


def _found(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> dict[tuple[int, int], int]:
    return {(a, b): c for a, b, c in zip(i.tolist(), j.tolist(), d.tolist(), strict=True)}


def test_faiss_range_search_returns_exactly_the_brute_force_pairs_on_20k_hashes() -> None:
    full, zoom = _planted_hashes(np.random.default_rng(1), 20_000, planted=400)
    i, j, d = near_pairs(Hashes(full, (zoom,)), None, THRESHOLD, EXACT)
    found = _found(i, j, d)
    expected = _brute_force([full, zoom], [full, zoom], within=True)
    assert found == expected
    assert len(expected) >= 250  # most planted copies are within the threshold (a few random pairs too)
    assert np.all(np.diff(i * len(full) + j) > 0)  # sorted by pair, each once

    evaluation = full[::200] ^ np.uint8(1)  # 100 evaluation images one bit off training images
    eval_zoom = zoom[::200]
    i, j, d = near_pairs(Hashes(full, (zoom,)), Hashes(evaluation, (eval_zoom,)), THRESHOLD, EXACT)
    assert _found(i, j, d) == _brute_force([full, zoom], [evaluation, eval_zoom], within=False)


def test_the_approximate_index_finds_only_true_pairs_and_nearly_all_of_them() -> None:
    """Beyond exact_max the search is IVF: a pair it returns is a true pair (the codes are compared exactly, though
    the closest pair of an image's hashes may be missed), and it misses few (docs/benchmarks.md measures recall)."""
    full, zoom = _planted_hashes(np.random.default_rng(2), 20_000, planted=400)
    exact = _found(*near_pairs(Hashes(full, (zoom,)), None, THRESHOLD, EXACT))
    approximate = _found(
        *near_pairs(Hashes(full, (zoom,)), None, THRESHOLD, SearchPlan(exact_max=0, nlist=0, nprobe=16))
    )
    assert approximate.keys() <= exact.keys()
    assert all(distance >= exact[pair] for pair, distance in approximate.items())  # maybe not its closest hashes
    assert len(approximate) >= 0.9 * len(exact)


def test_pair_distances_are_the_smallest_over_the_hash_combinations_at_256_bits(monkeypatch) -> None:
    monkeypatch.setattr(neighbours, "PAIRS_PER_CHUNK", 1024)  # 5,000 pairs: several chunks and a partial one
    rng = np.random.default_rng(3)
    a = Hashes(*_random_codes(rng, 300, 32, views=3))
    b = Hashes(*_random_codes(rng, 200, 32, views=3))
    i, j = rng.integers(0, 300, size=5000), rng.integers(0, 200, size=5000)
    i[:3], j[:3] = 7, 9
    b.zooms[1][9] = a.full[7] ^ np.eye(32, dtype=np.uint8)[0]  # a's full hash one bit off b's second zoom
    bits = {name: np.unpackbits(x, axis=1).astype(int) for name, x in (("a", a.full), ("b", b.full))}
    a_zooms = [np.unpackbits(z, axis=1).astype(int) for z in a.zooms]
    b_zooms = [np.unpackbits(z, axis=1).astype(int) for z in b.zooms]
    expected = [
        min(
            [int((bits["a"][x] != bits["b"][y]).sum())]
            + [int((bits["a"][x] != z[y]).sum()) for z in b_zooms]
            + [int((z[x] != bits["b"][y]).sum()) for z in a_zooms]
        )
        for x, y in zip(i.tolist(), j.tolist(), strict=True)
    ]
    distances = pair_distances(i, j, a, b)
    assert distances.tolist() == expected
    assert distances[:3].tolist() == [1, 1, 1]
    assert 100 < np.median(distances) < 128  # random 256-bit hashes: about 128 apart, less for the smallest of 5


def _random_codes(rng: np.random.Generator, n: int, width: int, views: int) -> tuple[np.ndarray, tuple]:
    full, *zooms = (rng.integers(0, 256, size=(n, width), dtype=np.uint8) for _ in range(views))
    return full, tuple(zooms)


def test_hex_hashes_decode_to_the_bytes_they_spell() -> None:
    assert codes(["0123456789abcdef", "FFFFFFFFFFFFFFFF"]).tolist() == [
        [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF], [255] * 8,
    ]  # fmt: skip
    assert codes(["0f" * 32], bits=256).tolist() == [[15] * 32]
    with pytest.raises(ValueError, match="hex digits"):
        codes(["0123456789abcdeg"])
    with pytest.raises(ValueError, match="64 hex digits"):
        codes(["0123456789abcdef"], bits=256)


def test_vimeo_frames_are_evenly_spaced() -> None:
    assert frame_names(1) == {"im4.png"}
    assert frame_names(3) == {"im1.png", "im4.png", "im7.png"}
    assert len(frame_names(7)) == 7
    with pytest.raises(LicError):
        frame_names(8)
