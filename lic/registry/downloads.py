"""`lic pull` and `fetch_checkpoint`: registered models downloaded for offline use.

URIs: `models:/<name>@<alias>`, `models:/<name>/<version>`, or `runs:/<run_id>/<path>`. An alias is resolved to
its version first, so the download is of one immutable version even if the alias moves meanwhile. The folder is
the MLflow model as registered (MLmodel, the pinned requirements, the evaluation files, the `lic` code) plus
`model.pt`, the lic checkpoint at the top, so both `mlflow.pyfunc.load_model(DIR)` and `lic compress --model DIR`
work offline. Downloads land in a staging folder that replaces the target only when complete.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
from mlflow.store.artifact.utils.models import get_model_name_and_version

from lic.checkpoint import CHECKPOINT_FILE
from lic.errors import LicError
from lic.io.atomic import staged_directory
from lic.registry.tracking import client, registry_errors, tracking_uri

CACHE_ENV = "LIC_CACHE_DIR"


def cache_root() -> Path:
    """`$LIC_CACHE_DIR`, else ~/.cache/lic: where fetch_checkpoint keeps downloaded versions."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lic") / "models"


def resolve(uri: str) -> tuple[str, str]:
    """(a URI pinned to one version, a folder name that identifies it across stores)."""
    if not uri.startswith(("models:/", "runs:/")):
        raise LicError(f"{uri}: expected models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>")
    registry = client()  # fails clearly, without creating anything, when there is no store to read
    store = hashlib.sha256(tracking_uri().encode()).hexdigest()[:10]
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        if not run_id:
            raise LicError(f"{uri}: expected runs:/<run_id>/<path>")
        return uri, f"runs-{run_id}-{path.replace('/', '_') or 'root'}-{store}"
    with registry_errors(uri):
        resolved = get_model_name_and_version(registry, uri)
        if len(resolved) != 2:
            raise LicError(f"{uri}: name a registered model version, e.g. models:/<name>@champion")
        name, version = resolved
        registry.get_model_version(name, version)  # fails clearly for a version that does not exist
    return f"models:/{name}/{version}", f"{name}-v{version}-{store}"


def pull(uri: str, dest: Path | str | None = None) -> Path:
    """Download the model at `uri` into `dest` (default ./<name>-v<version>) and return the folder."""
    pinned, key = resolve(uri)
    dest = Path(dest) if dest is not None else Path(key.rsplit("-", 1)[0])
    if dest.exists() and any(dest.iterdir()) and not (dest / CHECKPOINT_FILE).is_file():
        raise LicError(f"{dest} exists and is not a pulled model: choose an empty or new folder")
    with staged_directory(dest) as staging, registry_errors(uri):
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(staging)))
        checkpoint = _find_checkpoint(downloaded, uri)
        if checkpoint != staging / CHECKPOINT_FILE:
            os.link(checkpoint, staging / CHECKPOINT_FILE)
    return dest


def fetch_checkpoint(uri: str) -> Path:
    """The local path of the lic checkpoint of a registered model version, downloaded once into the cache.

    The codec CLI's model resolver calls this for `models:/` and `runs:/` references.
    """
    pinned, key = resolve(uri)
    folder = cache_root() / key
    if not (folder / CHECKPOINT_FILE).is_file():
        pull(pinned, folder)
    return folder / CHECKPOINT_FILE


def _find_checkpoint(downloaded: Path, uri: str) -> Path:
    for candidate in (downloaded, downloaded / CHECKPOINT_FILE, downloaded / "artifacts" / CHECKPOINT_FILE):
        if candidate.is_file():
            return candidate
    raise LicError(f"{uri} holds no lic checkpoint ({CHECKPOINT_FILE}): not a model registered by `lic register`")
