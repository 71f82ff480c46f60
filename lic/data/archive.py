"""Extract the chosen members of zip and tar archives, refusing names that would land outside the destination.

Members are streamed one by one (archives here are up to ~140 GB), so extracting a subset (Vimeo keeps one frame
in seven) costs only what it keeps. Zip and gzip check their CRCs while reading, which catches corruption in
sources that publish no checksum.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from lic.errors import LicError

Member = tuple[str, Callable[[], IO[bytes]]]
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def members(archive: Path) -> Iterator[Member]:
    """(name, opener) of every regular file in a zip or tar archive, in archive order."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.open(info)
    else:
        with tarfile.open(archive, mode="r|*") as tf:
            yield from tar_members(tf)


def tar_members(tf: tarfile.TarFile) -> Iterator[Member]:
    """Regular files of an open tar; in stream mode each must be read before the next is yielded."""
    for info in tf:
        if info.isfile():
            yield info.name, lambda info=info: tf.extractfile(info)


def extract(source: Iterator[Member], dest: Path, select: Callable[[str], str | None]) -> int:
    """Write each member that `select` maps to a relative path under `dest`; return how many were written."""
    count = 0
    for name, open_member in source:
        relative = select(name)
        if relative is None:
            continue
        target = safe_join(dest, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        count += 1
    return count


def safe_join(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute names and `..` (a crafted archive must not write elsewhere)."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or any(part in ("..", "") for part in parts):
        raise LicError(f"archive member {relative!r} would be written outside {root}")
    return root.joinpath(*parts)
