"""fetch@<source>: run a source's adapter into a staging folder and move the result into place atomically.

Every source in params.yaml has a fetch stage (DVC's graph is static); a source outside the active profile only
writes its `source.json` saying so, which costs nothing and lets `dvc exp run -S profile=full` switch profiles.
The raw tree is `data/raw/<source>/<split>/...` with split `train` or `eval`; `source.json` beside the splits
records where the files came from (URLs, verified checksums, per-file licences).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lic.errors import LicError
from lic.io.atomic import staged_directory
from lic.io.progress import say
from lic.params import Params

if TYPE_CHECKING:  # imported for real only by active sources, so inactive and offline ones stay cheap
    from lic.data.download import RetryPolicy

SOURCE_INFO = "source.json"
# Adapter name (params: data.sources.<source>.adapter) -> module in lic.data.sources with a `fetch` function.
ADAPTERS = ("sample", "http", "vimeo", "imagenet", "local")


@dataclass(frozen=True)
class FetchContext:
    """What an adapter may use besides its own params: where downloads go, how to retry, the environment."""

    downloads: Path
    policy: RetryPolicy
    env: Mapping[str, str]


def fetch_source(params: Params, source: str, env: Mapping[str, str] | None = None) -> Path:
    """Obtain, verify and place one source under data/raw/<source>; return that folder."""
    data = params.data
    if source not in data.sources:
        raise LicError(f"unknown source {source!r}; data.sources has: {', '.join(data.sources)}")
    settings = data.sources[source]
    active = source in params.active_sources
    dest = Path(data.paths.raw) / source
    downloads = Path(data.paths.downloads) / source
    info: dict[str, Any] = {
        "source": source,
        "adapter": settings.adapter,
        "active": active,
        "profile": params.profile,
        "license": settings.license,
    }
    with staged_directory(dest) as staging:
        if active:
            from lic.data.download import RetryPolicy

            environment = os.environ if env is None else env
            context = FetchContext(downloads, RetryPolicy.from_params(data.download), environment)
            info.update(adapter(settings.adapter)(settings, staging, context))
        else:
            say(f"{source}: not in profile {params.profile!r}, recorded as inactive")
        (staging / SOURCE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if active and not data.download.keep_archives:
        shutil.rmtree(downloads, ignore_errors=True)
    return dest


def adapter(name: str):
    """The `fetch(settings, staging, context) -> provenance dict` function of an adapter module."""
    if name not in ADAPTERS:
        raise LicError(f"unknown adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(f"lic.data.sources.{name}").fetch


def read_source_info(raw: Path) -> dict[str, Any]:
    """The `source.json` fetch wrote, or a clear error when fetch has not run."""
    try:
        return json.loads((raw / SOURCE_INFO).read_text())
    except FileNotFoundError:
        raise LicError(f"{raw / SOURCE_INFO} not found: fetch the source first (dvc repro or lic data fetch)") from None


def place(src: Path, dst: Path) -> None:
    """Put a local file into the raw tree: a hard link when on the same filesystem (ImageNet is 140 GB), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
