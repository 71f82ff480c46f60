"""Files on a web server: archives (zip, tar, tar.gz) whose image members are kept, or single images.

Settings: `split` and `files`, each `{url, size, checksum}` (checksum `<algorithm>:<hex>`; a source that publishes
none is pinned by its first fetch, see lic.data.download.Pins). Archive members keep their path inside the
archive; a single image keeps its file name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lic.data import archive
from lic.data.download import Remote
from lic.data.fetch import FetchContext, Plan
from lic.data.layout import Placement
from lic.data.names import image_member, is_image_name
from lic.errors import LicError


def plan(settings: dict[str, Any], context: FetchContext) -> Plan:
    return Plan(remotes=[Remote.from_params(entry) for entry in settings.files])


def fetch(
    settings: dict[str, Any], downloads: Iterable[tuple[Remote, Path]], place: Placement, context: FetchContext
) -> dict[str, Any]:
    split = settings.split
    for remote, path in downloads:
        if archive.is_archive(path):
            if place.add_archive(split, path, image_member) == 0:
                raise LicError(f"{remote.url}: the archive holds no usable images")
        elif is_image_name(path.name):
            place.add_file(split, path.name, path)
        else:
            raise LicError(f"{remote.url}: neither an archive (.zip, .tar, .tar.gz) nor an image")
    return {}
