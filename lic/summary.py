"""What `make pipeline` prints at the end: the RD tables, where the plots are, and how to reach the models.

It only reads what the report and register stages wrote, so it costs nothing when `dvc repro` had nothing to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lic.errors import LicError
from lic.params import Params


def summary(params: Params, root: Path = Path()) -> str:
    report_dir = root / params.report.out_dir
    record_path = root / params.registry.record
    try:
        report = (report_dir / "report.md").read_text()
        registered = json.loads(record_path.read_text())
    except FileNotFoundError as err:
        raise LicError(f"{err.filename} is missing: run `make pipeline` (or `dvc repro`) first") from None
    tables = [line for line in report.splitlines() if line.startswith(("|", "## ")) and line != "## Notes"]
    # The store the register stage used (it records it), not a guess at MLflow's default.
    store = next(iter(registered.values()), {}).get("store") or os.environ.get(
        "MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"
    )
    lines = ["Rate-distortion results (real bitstreams):", *tables, ""]
    lines.append(f"Plots: {report_dir / 'figures'}/  (full report: {report_dir / 'report.md'}; `dvc plots show`)")
    lines.append("Registered models:")
    for key, entry in sorted(registered.items()):
        lines.append(f"  {key}: {entry['uri']}  ({_status(entry['decision'])})")
    if store.startswith("sqlite"):
        lines.append(
            f"MLflow UI: mlflow ui --backend-store-uri {store} --host 127.0.0.1, then open http://127.0.0.1:5000"
        )
    else:
        lines.append(f"MLflow UI: {store}")
    first = registered[min(registered)] if registered else None
    if first:
        lines.append(f"Pull a model: lic pull models:/{first['name']}@champion -o models/{first['name']}")
        lines.append(f"Use it:       lic compress photo.png --model models:/{first['name']}@champion")
    return "\n".join(lines)


def _status(decision: dict[str, Any] | None) -> str:
    """A version registered by an earlier run (the same checkpoint) has no promotion decision of this run."""
    if decision is None:
        return "registered by an earlier run"
    return "champion" if decision["promoted"] else "candidate"
