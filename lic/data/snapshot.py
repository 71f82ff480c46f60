"""datasets/, the raw data a team provides itself (ImageNet's licence-gated tars), versioned by datasets.dvc.

The repository records an empty datasets/; a team adds its files, runs `dvc add datasets` and pushes them to its
remote. A fresh clone has datasets.dvc but not the folder, which `dvc status` reports until it is restored.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from lic.errors import LicError


def ensure_datasets(root: Path = Path(".")) -> str:
    """Make datasets/ match datasets.dvc where that needs no remote; say what to run where it does."""
    folder, record = root / "datasets", root / "datasets.dvc"
    if folder.exists():
        return "datasets/ is present"
    if not record.exists():
        raise LicError(f"{record} not found: run from the project root")
    files = int(yaml.safe_load(record.read_text())["outs"][0].get("nfiles", 0))
    if files:
        return f"datasets/ ({files} files in datasets.dvc) is not here: `dvc pull datasets.dvc` fetches it"
    folder.mkdir()
    # Hashing the new empty folder puts its (empty) listing into the DVC cache, which a fresh clone lacks.
    subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", record.name], cwd=root, check=True)
    return "created the empty datasets/ that datasets.dvc records"
