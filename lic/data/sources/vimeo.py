"""Vimeo-90K septuplets: clips of 7 consecutive 448x256 frames, listed for training in sep_trainlist.txt.

Frames of one clip are near-duplicates of each other, so only `frames_per_sequence` evenly spaced frames of each
listed clip are extracted (1 keeps the middle frame, im4). Placed as `<split>/<clip>/<sub-clip>/im<N>.png`.
"""

from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from lic.data import archive
from lic.data.download import Remote, download, provenance
from lic.data.fetch import FetchContext
from lic.errors import LicError

FRAMES = 7


def fetch(settings: dict[str, Any], staging: Path, context: FetchContext) -> dict[str, Any]:
    keep = frame_names(settings.frames_per_sequence)
    split_dir = staging / settings.split
    inputs, clips, frames = [], 0, 0
    for entry in settings.files:
        remote = Remote.from_params(entry)
        path = download(remote, context.downloads, context.policy)
        inputs.append(provenance(remote, path))
        listed = train_list(path, settings.list)
        frames += archive.extract(archive.members(path), split_dir, partial(select, clips=listed, keep=keep))
        clips += len(listed)
    if frames == 0:
        raise LicError("vimeo: no frame of a listed clip was found in the archive")
    return {"inputs": inputs, "clips": clips, "frames": frames}


def frame_names(count: int) -> frozenset[str]:
    """`count` evenly spaced frame names of a septuplet, always including the middle one when count is odd."""
    if not 1 <= count <= FRAMES:
        raise LicError(f"vimeo: frames_per_sequence must be 1 to {FRAMES}, not {count}")
    if count == 1:
        return frozenset({f"im{FRAMES // 2 + 1}.png"})
    return frozenset(f"im{round(1 + i * (FRAMES - 1) / (count - 1))}.png" for i in range(count))


def train_list(zip_path: Path, list_name: str) -> set[str]:
    """Clip ids (`00001/0001`) named in the archive's list file."""
    with zipfile.ZipFile(zip_path) as zf:
        found = [name for name in zf.namelist() if PurePosixPath(name).name == list_name]
        if not found:
            raise LicError(f"{zip_path.name}: no {list_name} inside")
        return {line.strip() for line in zf.read(found[0]).decode().splitlines() if line.strip()}


def select(name: str, clips: set[str], keep: frozenset[str]) -> str | None:
    """`<clip>/<sub-clip>/imN.png` for a kept frame of a listed clip (member `.../sequences/<clip>/<sub>/imN.png`)."""
    parts = PurePosixPath(name).parts
    if len(parts) < 4 or parts[-4] != "sequences" or parts[-1] not in keep:
        return None
    clip = f"{parts[-3]}/{parts[-2]}"
    return f"{clip}/{parts[-1]}" if clip in clips else None
