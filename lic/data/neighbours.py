"""Every pair of images whose perceptual hashes lie within a Hamming distance, found exactly, as matrix products.

With bits written as ±1, the dot product of two 64-bit hashes is 64 - 2 * Hamming distance, so one float32
matrix product (BLAS, all cores) scores a whole tile of pairs; no pair is missed as with bucketing heuristics.
The distance between two images is the smallest over full-vs-full, full-vs-zoom and zoom-vs-full hashes, which
is what lets a cropped copy match its original (lic.data.hashing). Cost grows with the square of the image count:
measured throughput and what it means for the full corpus are in docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TILE = 2048


@dataclass(frozen=True)
class Hashes:
    """±1 float32 bit matrices of the full-image hashes and of each zoom, one row per image."""

    full: np.ndarray
    zooms: tuple[np.ndarray, ...]

    @classmethod
    def from_hex(cls, full: Sequence[str], zooms: Sequence[Sequence[str]]) -> Hashes:
        """From manifest columns: `phash` and `phash_zoom` (one list per image, same length for all)."""
        levels = len(zooms[0]) if len(zooms) else 0
        return cls(_signs(full), tuple(_signs([z[level] for z in zooms]) for level in range(levels)))

    def __len__(self) -> int:
        return self.full.shape[0]


def near_pairs(a: Hashes, b: Hashes | None, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) for every pair within `threshold`: i in `a`, j in `b`; with `b` None, pairs i < j in `a`."""
    within = b is None
    b = a if within else b
    bits = a.full.shape[1] if len(a) else 64
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(a), TILE):
        rows = slice(start, min(start + TILE, len(a)))
        first = start if within else 0  # within one set, only tiles on or right of the diagonal
        for col_start in range(first, len(b), TILE):
            cols = slice(col_start, min(col_start + TILE, len(b)))
            dots = a.full[rows] @ b.full[cols].T
            for a_zoom, b_zoom in zip(a.zooms, b.zooms, strict=True):
                np.maximum(dots, a.full[rows] @ b_zoom[cols].T, out=dots)
                np.maximum(dots, a_zoom[rows] @ b.full[cols].T, out=dots)
            distance = np.rint((bits - dots) / 2).astype(np.int32)
            hit = distance <= threshold
            if within and col_start == start:
                hit &= np.triu(np.ones_like(hit), k=1)
            i, j = np.nonzero(hit)
            found_i.append(i + start)
            found_j.append(j + col_start)
            found_d.append(distance[i, j])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.int32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def _signs(hexes: Sequence[str]) -> np.ndarray:
    """Hex hashes as an (n, bits) float32 matrix of ±1."""
    if not len(hexes):
        return np.zeros((0, 64), dtype=np.float32)
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), dtype=np.uint8).reshape(len(hexes), -1)
    return np.unpackbits(raw, axis=1).astype(np.float32) * 2 - 1
