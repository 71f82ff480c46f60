"""What `make pipeline` prints at the end: the RD tables, where the plots are, and how to reach the models.

It only reads what the report and register stages wrote, so it costs nothing when `dvc repro` had nothing to do.
A model is advertised as `@champion` only if the register stage found it holding the alias, i.e. it passed the
promotion gate (quality floor included); otherwise the summary says why and points to `@candidate`. The commands
it prints name the store (`MLFLOW_TRACKING_URI=...`), so they work from any folder.
"""

from __future__ import annotations

import json
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
    lines = ["Rate-distortion results (real bitstreams):", *tables, ""]
    lines.append(f"Plots: {report_dir / 'figures'}/  (full report: {report_dir / 'report.md'}; `dvc plots show`)")
    if not registered:
        return "\n".join(lines)
    # The store the register stage used, as it recorded it (absolute: the project's SQLite file or a server).
    store = next(iter(registered.values())).get("store")
    lines.append(f"Registered models ({f'MLflow store {store}' if store else 'MLflow store of the register stage'}):")
    for key, entry in sorted(registered.items()):
        lines.append(f"  {key}: {entry['uri']}  ({_status(entry)})")
    if store and store.startswith("sqlite"):
        lines.append(
            f"MLflow UI: mlflow ui --backend-store-uri {store} --host 127.0.0.1, then open http://127.0.0.1:5000"
        )
    elif store:
        lines.append(f"MLflow UI: {store}")
    champions = [entry for _, entry in sorted(registered.items()) if _is_champion(entry)]
    env = f"MLFLOW_TRACKING_URI={store} " if store else ""
    if champions:
        name = champions[0]["name"]
        lines.append(f"Pull a model: {env}lic pull models:/{name}@champion -o models/{name}")
        lines.append(f"Use it:       {env}lic compress photo.png --model models:/{name}@champion")
    else:
        name = registered[min(registered)]["name"]
        lines.append("No champion: no registered model passed the promotion gate (see the reasons above).")
        lines.append(f"Try a candidate anyway: {env}lic compress photo.png --model models:/{name}@candidate")
    return "\n".join(lines)


def _is_champion(entry: dict[str, Any]) -> bool:
    """The alias state the register stage recorded; records from before it did: the decision of that run."""
    if "champion" in entry:
        return bool(entry["champion"])
    return bool(entry["decision"] and entry["decision"]["promoted"])


def _status(entry: dict[str, Any]) -> str:
    decision = entry["decision"]
    if _is_champion(entry):
        return "champion" if decision else "champion; registered by an earlier run"
    if decision is None:  # an already registered checkpoint: this run did not gate it
        return "registered by an earlier run; candidate, not champion"
    return f"candidate, not promoted: {decision['reason']}"
