"""params.yaml, the one place every knob of the pipeline lives: DVC stages and the CLI both read it through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lic.errors import LicError


def load_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    """The parsed params file; a missing file is a user error (run from the project root or pass --params)."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LicError(f"{path} not found: run from the project root or pass --params") from None
    if not isinstance(params, dict):
        raise LicError(f"{path} must hold a mapping of parameters")
    return params
