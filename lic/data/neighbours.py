"""Every pair of images whose perceptual hashes lie within a Hamming distance, by faiss binary range search.

The distance between two images is the smallest over full-vs-full, full-vs-zoom and zoom-vs-full hashes, which is
what lets a cropped copy match its original (lic.data.hashing). Up to `exact_max` indexed images the search is
exact: faiss's IndexBinaryFlat compares every pair with popcounts, n^2 / 2 of them, fast enough for 10^5 images.
Beyond, an inverted file (IndexBinaryIVF) puts the hashes in `nlist` cells around trained centroids and compares
a hash only with those of its `nprobe` nearest cells, which grows like n^1.5 with nlist ~ sqrt(n) and misses a pair
only when its two hashes fall in cells far apart; its recall on planted duplicates is measured by bench/scale.py
and docs/benchmarks.md. Pairs are numpy arrays throughout: 16 bytes per pair, never Python objects.

`pair_distances` measures given pairs over the same combinations, with any hash length: the dedupe stage confirms
the 64-bit search's pairs on 256-bit hashes, which tell chance matches from copies (docs/datasets.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

# OpenMP threads that spin while waiting for work make faiss 20-40x slower on a machine whose cores are shared
# (measured on the 2-core development machine under load); a waiting thread sleeps instead. Read at faiss's import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lic.params import NeighbourSearch

BITS = 64  # what the search indexes
PAIRS_PER_CHUNK = 1 << 18  # pair_distances compares this many pairs at once: about 8 MiB per array at 256 bits
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


@dataclass(frozen=True)
class Hashes:
    """(n, bits / 8) uint8 codes of the full-image hashes and of each zoom, one row per image (faiss's binary
    layout)."""

    full: np.ndarray
    zooms: tuple[np.ndarray, ...]

    @classmethod
    def from_arrow(cls, full: pa.Array, zooms: pa.Array, bits: int = BITS) -> Hashes:
        """From manifest columns (`phash` and `phash_zoom`, or the 256-bit pair) as Arrow arrays: a million rows
        without a Python object per hash."""
        full = codes(full.to_pylist(), bits)
        if not len(zooms):
            return cls(full, ())
        levels = len(zooms[0].as_py())
        flat = codes(pc.list_flatten(zooms).to_pylist(), bits).reshape(len(zooms), levels, bits // 8)
        return cls(full, tuple(np.ascontiguousarray(flat[:, level]) for level in range(levels)))

    def __len__(self) -> int:
        return self.full.shape[0]


@dataclass(frozen=True)
class SearchPlan:
    """How to search: exact up to `exact_max` indexed images, else IVF with `nlist` cells (0: 4 sqrt(n), at
    least 16) of which `nprobe` are visited per query."""

    exact_max: int
    nlist: int
    nprobe: int

    @classmethod
    def of(cls, config: NeighbourSearch) -> SearchPlan:
        """From params' data.dedupe.search."""
        return cls(config.exact_max, config.nlist, config.nprobe)

    def is_exact(self, indexed: int) -> bool:
        return indexed <= self.exact_max


def near_pairs(
    a: Hashes, b: Hashes | None, threshold: int, plan: SearchPlan
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) for every pair within `threshold`: i in `a`, j in `b`; with `b` None, pairs i < j in `a`.
    Sorted by (i, j); each pair once, with its smallest distance over the hash combinations."""
    within = b is None
    b = a if within else b
    if not len(a) or not len(b):
        return _empty()
    found = []
    full_index = _index(b.full, plan)
    found.append(_range(full_index, a.full, threshold))
    for level, b_zoom in enumerate(b.zooms):
        found.append(_range(_index(b_zoom, plan), a.full, threshold))  # a's full vs b's zoom
        if not within:  # within one set, zoom-vs-full is the same search with i and j swapped
            found.append(_range(full_index, a.zooms[level], threshold))
    i, j, d = (np.concatenate(parts) for parts in zip(*found, strict=True))
    if within:
        i, j = np.minimum(i, j), np.maximum(i, j)
        keep = i != j
        i, j, d = i[keep], j[keep], d[keep]
    key = i * len(b) + j
    order = np.lexsort((d, key))  # by pair, smallest distance first
    key, d = key[order], d[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, d = key[first], d[first]
    return key // len(b), key % len(b), d.astype(np.int32)


def pair_distances(i: np.ndarray, j: np.ndarray, a: Hashes, b: Hashes) -> np.ndarray:
    """The distance of each given pair (i in `a`, j in `b`): the smallest Hamming distance over full-vs-full,
    full-vs-zoom and zoom-vs-full, as near_pairs measures it, at any hash length."""
    distances = np.empty(len(i), dtype=np.int32)
    for start in range(0, len(i), PAIRS_PER_CHUNK):
        rows, columns = i[start : start + PAIRS_PER_CHUNK], j[start : start + PAIRS_PER_CHUNK]
        views = [(a.full, b.full)]
        views += [(a.full, b_zoom) for b_zoom in b.zooms] + [(a_zoom, b.full) for a_zoom in a.zooms]
        distances[start : start + len(rows)] = np.min(
            [_POPCOUNT[x[rows] ^ y[columns]].sum(axis=1, dtype=np.int32) for x, y in views], axis=0
        )
    return distances


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, empty.astype(np.int32)


def _index(codes_: np.ndarray, plan: SearchPlan) -> faiss.IndexBinary:
    """A binary index over `codes_`: exact (flat) when small enough, else an IVF trained on a sample of them."""
    n = len(codes_)
    bits = codes_.shape[1] * 8
    if plan.is_exact(n):
        index = faiss.IndexBinaryFlat(bits)
    else:
        nlist = min(n, plan.nlist or max(16, int(4 * math.sqrt(n))))
        # The cells' centroids are hashes drawn from the data: binary k-means would cost more than the search,
        # and with a quantizer already holding nlist codes faiss skips it.
        quantizer = faiss.IndexBinaryFlat(bits)
        quantizer.use_heap = False  # faiss's counting search: 2x faster for the nprobe nearest cells
        quantizer.add(codes_[np.sort(np.random.default_rng(0).choice(n, size=nlist, replace=False))])
        index = faiss.IndexBinaryIVF(quantizer, bits, nlist)
        index.train(codes_[:nlist])
        index.nprobe = min(plan.nprobe, nlist)
        index.own_fields = False
        index.referenced_quantizer = quantizer  # keep the quantizer alive as long as the index
    index.add(codes_)
    return index


def _range(index: faiss.IndexBinary, queries: np.ndarray, threshold: int) -> tuple[np.ndarray, ...]:
    """(query, indexed, distance) of every indexed code within `threshold` of a query (faiss's radius is strict)."""
    limits, distances, labels = index.range_search(queries, threshold + 1)
    rows = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(limits).astype(np.int64))
    return rows, labels.astype(np.int64), distances.astype(np.int32)


def codes(hexes: Sequence[str], bits: int = BITS) -> np.ndarray:
    """Hex hashes of `bits` bits as an (n, bits / 8) uint8 matrix, decoded in one vectorised step."""
    if not len(hexes):
        return np.zeros((0, bits // 8), dtype=np.uint8)
    ascii_ = np.frombuffer("".join(hexes).encode("ascii"), dtype=np.uint8)
    if len(ascii_) != bits // 4 * len(hexes):
        raise ValueError(f"perceptual hashes must be {bits // 4} hex digits each")
    nibbles = _NIBBLE[ascii_].reshape(len(hexes), bits // 8, 2)
    if (nibbles == 255).any():
        raise ValueError("perceptual hashes must be hex digits")
    return (nibbles[..., 0] << 4) | nibbles[..., 1]
