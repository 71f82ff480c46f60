"""Sources published as files on a web server: COCO 2017, DIV2K, CLIC 2020 (archives) and Kodak (single PNGs).

Each entry of `files` is downloaded (resumable, verified, lic.data.download); an archive contributes its image
members under `<split>/<path inside the archive>`, a single image goes to `<split>/<file name>`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lic.data import archive
from lic.data.download import Remote, download, provenance
from lic.data.fetch import FetchContext
from lic.data.rgb import image_member, is_image_name
from lic.errors import LicError


def fetch(settings: dict[str, Any], staging: Path, context: FetchContext) -> dict[str, Any]:
    split_dir = staging / settings.split
    split_dir.mkdir()
    inputs = []
    for entry in settings.files:
        remote = Remote.from_params(entry)
        path = download(remote, context.downloads, context.policy)
        inputs.append(provenance(remote, path))
        if archive.is_archive(path):
            count = archive.extract(archive.members(path), split_dir, image_member)
            if count == 0:
                raise LicError(f"{remote.url}: the archive holds no images")
        elif is_image_name(path.name):
            shutil.copyfile(path, split_dir / path.name)
        else:
            raise LicError(f"{remote.url}: neither an archive (.zip, .tar, .tar.gz) nor an image")
    return {"inputs": inputs}
