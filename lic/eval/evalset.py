"""The evaluation images, read from the dedupe stage's evaluation manifest and grouped by dataset.

A dataset is the manifest's `source` (kodak, clic, or the sample profile's `sample` photographs), so numbers are
never reported under a name they do not belong to. Images are decoded one at a time, when they are coded:
CLIC's 2K photographs are 8 MB each as pixels. The set's fingerprint (the pixel hashes the manifest already
holds) tells whether two evaluations saw the same images, which the registry's promotion gate relies on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from lic.data.rgb import load_rgb
from lic.data.schemas import SCHEMA, read_table
from lic.errors import LicError


@dataclass(frozen=True)
class EvalImage:
    dataset: str
    path: str
    width: int
    height: int
    pixel_sha256: str

    @property
    def name(self) -> str:
        return Path(self.path).name

    def pixels(self) -> np.ndarray:
        """H x W x 3 uint8, decoded exactly as the manifest hashed it."""
        return np.asarray(load_rgb(self.path).image)


@dataclass(frozen=True)
class EvalSet:
    images: tuple[EvalImage, ...]

    def __iter__(self) -> Iterator[EvalImage]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def datasets(self) -> list[str]:
        return sorted({image.dataset for image in self.images})

    def fingerprints(self) -> dict[str, str]:
        """Per dataset, a SHA-256 over the sorted pixel hashes of its images: equal means the same images."""
        return {
            dataset: hashlib.sha256(
                "\n".join(sorted(i.pixel_sha256 for i in self.images if i.dataset == dataset)).encode()
            ).hexdigest()
            for dataset in self.datasets
        }


def load_eval_set(manifest: Path | str, limit: int | None = None) -> EvalSet:
    """The usable images of an evaluation manifest, ordered by dataset and path; `limit` keeps the first n of each."""
    rows = [row for row in read_table(manifest, SCHEMA, "dvc repro dedupe").to_pylist() if row["status"] == "ok"]
    rows.sort(key=lambda row: (row["source"], row["path"]))
    if limit is not None:
        rows = [row for _, group in groupby(rows, key=lambda row: row["source"]) for row in list(group)[:limit]]
    if not rows:
        raise LicError(f"{manifest} holds no usable evaluation images")
    images = tuple(
        EvalImage(row["source"], row["path"], row["width"], row["height"], row["pixel_sha256"]) for row in rows
    )
    return EvalSet(images)
