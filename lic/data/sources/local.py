"""A folder of images a team already has (for example under datasets/, versioned by datasets.dvc).

Settings: `path` (the folder) and `split`. Files with image suffixes are placed as they are under their relative
path (a training source into tar shards, an evaluation source under eval/), broken ones included: the manifest
stage reports what is unusable, it is not silently dropped here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lic.data.fetch import FetchContext, Plan
from lic.data.layout import Placement
from lic.data.names import is_image_name
from lic.errors import LicError


def plan(settings: dict[str, Any], context: FetchContext) -> Plan:
    return Plan(local_bytes=sum(path.stat().st_size for path in _images(Path(settings.path))))


def fetch(settings: dict[str, Any], downloads: Iterable, place: Placement, context: FetchContext) -> dict[str, Any]:
    folder = Path(settings.path)
    files = _images(folder)
    for path in files:
        place.add_file(settings.split, path.relative_to(folder).as_posix(), path)
    return {"inputs": [{"path": folder.as_posix(), "files": len(files)}]}


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LicError(f"{folder}: no such folder (data.sources.<source>.path)")
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and is_image_name(path.name)]
    if not files:
        raise LicError(f"{folder}: holds no image files")
    return files
