"""Vimeo-90K septuplets: clips of 7 consecutive 448x256 frames, listed for training in sep_trainlist.txt.

Frames of one clip are near-duplicates of each other, so only `frames_per_sequence` evenly spaced frames of each
listed clip are kept (1 keeps the middle frame, im4), as members `<clip>/<sub-clip>/im<N>.png` of the shards.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from lic.data.archive import ArchiveError
from lic.data.download import Remote
from lic.data.fetch import FetchContext, Plan
from lic.data.layout import Placement
from lic.errors import LicError

FRAMES = 7


def plan(settings: dict[str, Any], context: FetchContext) -> Plan:
    keep = len(frame_names(settings.frames_per_sequence)) / FRAMES
    return Plan(remotes=[Remote.from_params(entry) for entry in settings.files], keep=keep)


def fetch(
    settings: dict[str, Any], downloads: Iterable[tuple[Remote, Path]], place: Placement, context: FetchContext
) -> dict[str, Any]:
    keep = frame_names(settings.frames_per_sequence)
    clips = frames = 0
    for _, path in downloads:
        listed = train_list(path, settings.list)
        frames += place.add_archive(settings.split, path, partial(select, clips=listed, keep=keep))
        clips += len(listed)
    if frames == 0:
        raise LicError("vimeo: no frame of a listed clip was found in the archive")
    return {"clips": clips, "frames": frames}


def frame_names(count: int) -> frozenset[str]:
    """`count` evenly spaced frame names of a septuplet, always including the middle one when count is odd."""
    if not 1 <= count <= FRAMES:
        raise LicError(f"vimeo: frames_per_sequence must be 1 to {FRAMES}, not {count}")
    if count == 1:
        return frozenset({f"im{FRAMES // 2 + 1}.png"})
    return frozenset(f"im{round(1 + i * (FRAMES - 1) / (count - 1))}.png" for i in range(count))


def train_list(zip_path: Path, list_name: str) -> set[str]:
    """Clip ids (`00001/0001`) named in the archive's list file (a text file of a few megabytes)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            found = [info for info in zf.infolist() if PurePosixPath(info.filename).name == list_name]
            if not found:
                raise LicError(f"{zip_path.name}: no {list_name} inside")
            if found[0].file_size > 64 << 20:
                raise ArchiveError(f"{zip_path.name}: {list_name} declares {found[0].file_size} bytes; not a clip list")
            text = zf.read(found[0]).decode()
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError) as err:
        raise ArchiveError(f"{zip_path.name}: corrupt or truncated archive ({type(err).__name__}: {err})") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def select(name: str, clips: set[str], keep: frozenset[str]) -> str | None:
    """`<clip>/<sub-clip>/imN.png` for a kept frame of a listed clip (member `.../sequences/<clip>/<sub>/imN.png`)."""
    parts = PurePosixPath(name).parts
    if len(parts) < 4 or parts[-4] != "sequences" or parts[-1] not in keep:
        return None
    clip = f"{parts[-3]}/{parts[-2]}"
    return f"{clip}/{parts[-1]}" if clip in clips else None
