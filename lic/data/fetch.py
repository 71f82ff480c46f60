"""fetch@<source>: check the disk, download, verify, pack into the raw layout, and move it into place atomically.

Every source in params.yaml has a fetch stage (DVC's graph is static); a source outside the active profile only
writes its `source.json` saying so, which costs nothing and lets `dvc exp run -S profile=full` switch profiles.
An active source runs in four steps:

1. its adapter's `plan`: what to download (URLs with sizes and checksums, the pins file filling in what params
   lack) and how many bytes of local inputs it copies;
2. the disk preflight: the bytes the source needs (downloads not yet on disk + the shards and files it writes)
   against the free space of each filesystem involved, refused in one line before anything is downloaded;
3. the downloads, several files at once (lic.data.download), each verified; a first download without a published
   checksum is pinned. When the disk holds the raw data and the largest download but not all of them, the files
   are instead downloaded one at a time, each deleted once packed;
4. the adapter's `fetch`: stream the members it keeps into the raw layout (lic.data.layout) in a staging folder,
   which replaces data/raw/<source> only when everything succeeded. It takes the downloads in order, packing each
   before asking for the next.

The layout and source.json are described in lic.data.layout and docs/datasets.md.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lic.data.archive import ArchiveLimits
from lic.data.layout import Placement
from lic.errors import LicError
from lic.io.atomic import staged_directory
from lic.io.progress import say
from lic.params import Params

if TYPE_CHECKING:  # imported for real only by active sources, so inactive and offline ones stay cheap
    from lic.data.download import DownloadPolicy, Pins, Remote

SOURCE_INFO = "source.json"
# Adapter name (params: data.sources.<source>.adapter) -> module in lic.data.sources with `plan` and `fetch`.
ADAPTERS = ("sample", "http", "vimeo", "imagenet", "local")


@dataclass(frozen=True)
class FetchContext:
    """What an adapter may use besides its own params: the environment and the archive limits."""

    env: Mapping[str, str]
    limits: ArchiveLimits


@dataclass(frozen=True)
class Plan:
    """What a source needs before anything is written.

    `remotes`: files to download; `local_bytes`: bytes of local inputs it reads; `keep`: the share of the input
    bytes that ends up in the raw tree (Vimeo keeps one frame in seven); `access_hint`: what to say when a server
    refuses access (401/403).
    """

    remotes: list[Remote] = field(default_factory=list)
    local_bytes: int = 0
    keep: float = 1.0
    access_hint: str = ""


def fetch_source(params: Params, source: str, env: Mapping[str, str] | None = None) -> Path:
    """Obtain, verify and place one source under data/raw/<source>; return that folder."""
    data = params.data
    if source not in data.sources:
        raise LicError(f"unknown source {source!r}; data.sources has: {', '.join(data.sources)}")
    settings = data.sources[source]
    active = source in params.active_sources
    dest = Path(data.paths.raw) / source
    info: dict[str, Any] = {
        "source": source,
        "adapter": settings.adapter,
        "active": active,
        "profile": params.profile,
        "license": settings.license,
    }
    if not active:
        with staged_directory(dest) as staging:
            say(f"{source}: not in profile {params.profile!r}, recorded as inactive")
            _write_info(staging, info)
        return dest

    from lic.data.download import DownloadError, DownloadPolicy, Pins

    downloads = Path(data.paths.downloads) / source
    policy = DownloadPolicy.from_params(data.download)
    pins = Pins(Path(data.paths.pins))
    keep_archives = data.download.keep_archives
    context = FetchContext(os.environ if env is None else env, ArchiveLimits.from_params(data.archive_limits))
    module = adapter(settings.adapter)
    plan = module.plan(settings, context)
    remotes = [pins.apply(remote) for remote in plan.remotes]
    inputs: list[dict[str, Any]] = []
    try:
        if preflight(source, remotes, plan, downloads, dest, policy, keep_archives):
            downloaded: Iterable[tuple[Remote, Path]] = _one_at_a_time(remotes, downloads, policy, pins, inputs)
        else:
            downloaded = _all_at_once(remotes, downloads, policy, pins, inputs)
        with staged_directory(dest) as staging:
            place = Placement(staging, int(data.archive_shard_mb * 2**20), context.limits)
            info.update(module.fetch(settings, downloaded, place, context))
            info.update(place.close())
            if remotes:
                info["inputs"] = inputs
            _write_info(staging, info)
    except DownloadError as err:
        if err.status in (401, 403) and plan.access_hint:
            raise LicError(f"{err} {plan.access_hint}") from None
        raise
    if not keep_archives:
        shutil.rmtree(downloads, ignore_errors=True)
    return dest


def preflight(
    source: str,
    remotes: list[Remote],
    plan: Plan,
    downloads: Path,
    dest: Path,
    policy: DownloadPolicy,
    keep_archives: bool,
) -> bool:
    """Refuse, before any download, a source that needs more bytes than the disks hold; return whether its
    archives must be downloaded and packed one at a time.

    Needed: the bytes of each download not yet on disk, plus what the raw tree will hold (the inputs times the
    share kept). Both are counted per filesystem, since downloads and raw data may live on different ones. When
    that does not fit but the raw data plus the largest download does (ImageNet's five Hugging Face archives on a
    200 GB node), and archives need not be kept, they are fetched one at a time, each deleted once packed: a
    failed run then downloads the packed ones again. A download whose size params.yaml, the pins file and the
    server all leave unknown is refused here too.
    """
    from lic.data.download import pending_bytes, remote_size

    sizes = []
    for remote in remotes:
        size = remote.size if remote.size is not None else remote_size(remote, policy)
        if size is None:
            raise LicError(
                f"{source}: the size of {remote.url} is unknown (no size in params.yaml, no pin, no Content-Length "
                "from the server); add `size:` or `checksum:` to its entry in data.sources"
            )
        sizes.append(size)
    pending = [pending_bytes(remote, downloads, size) for remote, size in zip(remotes, sizes, strict=True)]
    to_write = int((sum(sizes) + plan.local_bytes) * plan.keep)
    short = _shortfall(source, downloads, sum(pending), dest.parent, to_write)
    if short is None:
        say(f"{source}: {human_bytes(sum(pending))} to download, about {human_bytes(to_write)} of raw data to write")
        return False
    if keep_archives or len(remotes) < 2 or _shortfall(source, downloads, max(pending), dest.parent, to_write):
        raise LicError(short)
    say(
        f"{source}: the disk cannot hold every download and the raw data at once; downloading and packing the "
        f"{len(remotes)} files one at a time (at most {human_bytes(max(pending))} of downloads on disk)"
    )
    return True


def adapter(name: str):
    """The adapter module: `plan(settings, context) -> Plan`, `fetch(settings, downloads, place, context) -> dict`."""
    if name not in ADAPTERS:
        raise LicError(f"unknown adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(f"lic.data.sources.{name}")


def read_source_info(raw: Path) -> dict[str, Any]:
    """The `source.json` fetch wrote, or a clear error when fetch has not run."""
    try:
        return json.loads((raw / SOURCE_INFO).read_text())
    except FileNotFoundError:
        raise LicError(f"{raw / SOURCE_INFO} not found: fetch the source first (dvc repro or lic data fetch)") from None


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _write_info(staging: Path, info: dict[str, Any]) -> None:
    (staging / SOURCE_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _shortfall(source: str, downloads: Path, to_download: int, raw: Path, to_write: int) -> str | None:
    """Why the disks cannot take `to_download` bytes under `downloads` and `to_write` under `raw`, or None."""
    needs: dict[int, list[Any]] = {}
    for folder, count in ((downloads, to_download), (raw, to_write)):
        existing = _existing_ancestor(folder)
        needs.setdefault(existing.stat().st_dev, [existing, 0])[1] += count
    for existing, needed in needs.values():
        free = shutil.disk_usage(existing).free
        if needed > free:
            return (
                f"{source}: needs {human_bytes(needed)} on the filesystem of {existing} ({human_bytes(to_download)} "
                f"to download, {human_bytes(to_write)} of raw data) but only {human_bytes(free)} is free; free space "
                "or point data.paths.downloads / data.paths.raw at a larger disk"
            )
    return None


def _all_at_once(
    remotes: list[Remote], directory: Path, policy: DownloadPolicy, pins: Pins, inputs: list[dict[str, Any]]
) -> list[tuple[Remote, Path]]:
    """Every download, several at a time, verified and pinned before anything is packed."""
    from lic.data.download import download_all

    downloaded = list(zip(remotes, download_all(remotes, directory, policy), strict=True))
    for remote, path in downloaded:
        inputs.append(_verified_input(remote, path, pins))
    return downloaded


def _one_at_a_time(
    remotes: list[Remote], directory: Path, policy: DownloadPolicy, pins: Pins, inputs: list[dict[str, Any]]
) -> Iterator[tuple[Remote, Path]]:
    """Each download in turn, deleted when the adapter asks for the next (it has packed this one by then)."""
    from lic.data.download import download

    for remote in remotes:
        path = download(remote, directory, policy)
        inputs.append(_verified_input(remote, path, pins))
        yield remote, path
        path.unlink()


def _verified_input(remote: Remote, path: Path, pins: Pins) -> dict[str, Any]:
    """Pin a download that had no checksum, and what source.json says about it."""
    from lic.data.download import provenance

    pins.record(remote, path)
    return provenance(pins.apply(remote), path)
