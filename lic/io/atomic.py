"""Atomic writes: a reader (a later stage, DVC hashing an output) sees the old file or the new one, never half."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str, mode: int = 0o666) -> None:
    """Write a text file atomically; `mode` (less the umask) holds from its creation, e.g. 0o600 for secrets."""
    with atomic_path(path) as tmp:
        tmp.unlink(missing_ok=True)  # what a killed writer left would keep its own mode
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as out:
            out.write(text)


@contextmanager
def staged_directory(dest: Path) -> Iterator[Path]:
    """Yield an empty folder beside `dest` that replaces `dest` only if the block succeeds.

    A failed block removes the staging folder; a killed process leaves only `.<name>.staging`, which no later
    stage reads and the next run clears. So `dest` is always either absent, the previous tree, or complete.
    """
    dest = Path(dest)
    staging = dest.with_name(f".{dest.name}.staging")
    previous = dest.with_name(f".{dest.name}.previous")
    for leftover in (staging, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        dest.rename(previous)
    staging.rename(dest)
    shutil.rmtree(previous, ignore_errors=True)
