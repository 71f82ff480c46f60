"""A folder of images a team already has (for example under datasets/, versioned by datasets.dvc).

Settings: `path` (the folder) and `split`. Files with image suffixes are placed under `<split>/<relative path>`
as they are, broken ones included: the manifest stage reports what is unusable, it is not silently dropped here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lic.data.fetch import FetchContext, place
from lic.data.rgb import is_image_name
from lic.errors import LicError


def fetch(settings: dict[str, Any], staging: Path, context: FetchContext) -> dict[str, Any]:
    folder = Path(settings.path)
    if not folder.is_dir():
        raise LicError(f"{folder}: no such folder (data.sources.<source>.path)")
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and is_image_name(path.name)]
    if not files:
        raise LicError(f"{folder}: holds no image files")
    for path in files:
        place(path, staging / settings.split / path.relative_to(folder))
    return {"inputs": [{"path": folder.as_posix(), "files": len(files)}]}
