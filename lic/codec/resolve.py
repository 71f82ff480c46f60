"""The one way a model reference becomes a model ready to code: `resolve_model(ref)`.

A reference is a local lic checkpoint (a file, or a folder holding `model.pt`, as `lic pull` writes), or an
MLflow registry URI (`models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<run_id>/<path>`), which
`lic.registry.fetch_checkpoint` downloads once into a local cache. The CLI knows only this function, so new
kinds of reference plug in here without touching the commands.
"""

from __future__ import annotations

from pathlib import Path

from compressai.models import CompressionModel

from lic.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lic.errors import LicError

REGISTRY_SCHEMES = ("models:/", "runs:/")


def resolve_model(ref: str) -> CompressionModel:
    """Load the model `ref` names, in eval mode with its CDF tables, on the CPU."""
    model, _ = load_checkpoint(checkpoint_path(ref))
    return model


def checkpoint_path(ref: str) -> Path:
    """The local checkpoint file a reference stands for (downloaded first for registry URIs)."""
    if ref.startswith(REGISTRY_SCHEMES):
        try:
            from lic.registry import fetch_checkpoint
        except ImportError as err:
            raise LicError(f"{ref}: MLflow registry support is not installed ({err})") from err
        return Path(fetch_checkpoint(ref))
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_FILE
        if not path.is_file():
            raise LicError(f"{ref}: folder has no {CHECKPOINT_FILE} (expected a checkpoint or a pulled model)")
    elif not path.is_file():
        raise LicError(
            f"unknown model {ref!r}: not a checkpoint file, a folder with {CHECKPOINT_FILE}, or a models:/ URI"
        )
    return path
