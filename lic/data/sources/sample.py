"""The embedded default: real photographs shipped inside the scikit-image and matplotlib wheels.

No network, so `make pipeline` and the tests run anywhere. scikit-image fetches some of its images on demand
with pooch; only files present in the installed wheel are accepted here. Entries are `skimage/<file>` or
`matplotlib/<file>` (matplotlib's sample_data folder).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lic.data.fetch import FetchContext, Plan
from lic.data.layout import Placement
from lic.errors import LicError
from lic.io import checksums

# As stated in each package's documentation of the image (skimage.data docstrings, matplotlib sample data).
LICENSES = {
    "skimage/astronaut.png": "public-domain (NASA)",
    "skimage/brick.png": "CC0-1.0",
    "skimage/camera.png": "CC0-1.0",
    "skimage/cell.png": "CC0-1.0",
    "skimage/chelsea.png": "CC0-1.0",
    "skimage/clock_motion.png": "public-domain",
    "skimage/coffee.png": "CC0-1.0",
    "skimage/coins.png": "no-known-restrictions (Brooklyn Museum)",
    "skimage/grass.png": "CC0-1.0",
    "skimage/gravel.png": "CC0-1.0",
    "skimage/hubble_deep_field.jpg": "public-domain (NASA)",
    "skimage/ihc.png": "no-known-restrictions",
    "skimage/motorcycle_left.png": "middlebury-stereo-2014",
    "skimage/motorcycle_right.png": "middlebury-stereo-2014",
    "skimage/retina.jpg": "CC0-1.0",
    "skimage/rocket.jpg": "public-domain (SpaceX)",
    "skimage/text.png": "public-domain",
    "matplotlib/grace_hopper.jpg": "public-domain (US Navy)",
}
# Entry prefix -> (module, folder inside it, distribution name).
_PACKAGES = {
    "skimage": ("skimage", "data", "scikit-image"),
    "matplotlib": ("matplotlib", "mpl-data/sample_data", "matplotlib"),
}


def plan(settings: dict[str, Any], context: FetchContext) -> Plan:
    files = [_shipped_file(entry)[0] for split in ("train", "eval") for entry in getattr(settings, split)]
    return Plan(local_bytes=sum(path.stat().st_size for path in files))


def fetch(settings: dict[str, Any], downloads: Iterable, place: Placement, context: FetchContext) -> dict[str, Any]:
    """Pack the train list into train-00000.tar (members `skimage/<file>`) and copy the eval list under eval/."""
    shared = set(settings.train) & set(settings.eval)
    if shared:
        raise LicError(f"sample: files in both train and eval: {', '.join(sorted(shared))}")
    licenses, inputs = {}, []
    for split in ("train", "eval"):
        for entry in getattr(settings, split):
            src, version = _shipped_file(entry)
            place.add_file(split, entry, src)  # a copy, never a link: DVC makes cached files read-only
            licenses[f"{split}/{entry}"] = LICENSES.get(entry, "unknown (see the shipping package)")
            inputs.append({"file": entry, "package": version, "sha256": checksums.file_digest(src, "sha256")})
    return {"licenses": licenses, "inputs": inputs}


def _shipped_file(entry: str) -> tuple[Path, str]:
    """The installed file for `skimage/<name>` or `matplotlib/<name>`, and the package version it came from."""
    package, _, name = entry.partition("/")
    if package not in _PACKAGES or not name:
        raise LicError(f"sample file {entry!r}: write it as skimage/<file> or matplotlib/<file>")
    module, folder, distribution = _PACKAGES[package]
    spec = importlib.util.find_spec(module)
    path = Path(spec.submodule_search_locations[0]) / folder / name
    if not path.is_file():
        raise LicError(
            f"sample file {entry!r} is not in the installed {distribution} (only files shipped in its wheel can "
            "be used; scikit-image downloads some images on demand)"
        )
    return path, f"{distribution} {importlib.metadata.version(distribution)}"
