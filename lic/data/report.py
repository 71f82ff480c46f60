"""The dedupe stage's report: counts as DVC metrics (JSON), and a Markdown table a person reads.

The metrics hold numbers only, so `dvc metrics show/diff` can compare runs; the Markdown lists every skipped,
converted, duplicate and leaked file with its reason (long lists are cut, the merged manifest has them all).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from lic.data.schemas import location

MAX_ROWS = 1000  # per listing; a full-corpus run can skip tens of thousands of files
COUNTS = (
    ("files", "files"),
    ("ok", "usable"),
    ("converted", "converted"),
    ("skipped", "skipped"),
    ("train", "train"),
    ("eval", "eval"),
    ("kept", "kept"),
    ("exact_duplicates", "exact dup."),
    ("near_duplicates", "near dup."),
    ("leakage", "leakage"),
)
_DEDUP_COUNT = {"kept": "kept", "exact duplicate": "exact_duplicates", "near duplicate": "near_duplicates"}


def metrics(merged: pa.Table, sources: list[str]) -> dict[str, Any]:
    """Counts per source and in total, and skipped files per reason."""
    rows = merged.to_pylist()
    per_source = {source: dict.fromkeys((key for key, _ in COUNTS), 0) for source in sources}
    reasons: Counter[str] = Counter()
    for row in rows:
        counts = per_source[row["source"]]
        counts["files"] += 1
        if row["status"] != "ok":
            counts["skipped"] += 1
            reasons[skip_category(row["status"])] += 1
            continue
        counts["ok"] += 1
        counts[row["split"]] += 1
        counts["converted"] += bool(row["note"])
        if row["dedup"]:
            counts[_DEDUP_COUNT.get(row["dedup"], row["dedup"])] += 1
    total = {key: sum(counts[key] for counts in per_source.values()) for key, _ in COUNTS}
    return {"sources": per_source, "total": total, "skipped_by_reason": dict(sorted(reasons.items()))}


def skip_category(status: str) -> str:
    """`skipped: too small (100x80, ...)` -> `too small`."""
    return status.removeprefix("skipped: ").split(" (", 1)[0]


def to_json(values: dict[str, Any]) -> str:
    return json.dumps(values, indent=2) + "\n"


def summary_table(values: dict[str, Any]) -> str:
    """The per-source counts as a Markdown table (also printed at the end of the stage)."""
    rows = [[name, *(counts[key] for key, _ in COUNTS)] for name, counts in values["sources"].items()]
    rows.append(["**total**", *(values["total"][key] for key, _ in COUNTS)])
    return _table(["source", *(title for _, title in COUNTS)], rows)


def markdown(merged: pa.Table, values: dict[str, Any], profile: str, thresholds: dict[str, Any]) -> str:
    rows = merged.append_column("where", location(merged)).to_pylist()
    skipped = [[r["where"], r["status"].removeprefix("skipped: ")] for r in rows if r["status"] != "ok"]
    converted = [[r["where"], r["note"]] for r in rows if r["status"] == "ok" and r["note"]]
    duplicates = [
        [r["where"], r["duplicate_of"], r["dedup"], r["distance"]]
        for r in rows
        if r["dedup"] in ("exact duplicate", "near duplicate")
    ]
    leaks = [[r["where"], r["duplicate_of"], r["distance"]] for r in rows if r["dedup"] == "leakage"]
    parts = [
        f"# Datasets report: profile `{profile}`",
        f"Near duplicates: perceptual hashes within {thresholds['near_threshold']} bits; leakage: a training "
        f"image within {thresholds['leakage_threshold']} bits of an evaluation image (Hamming distance of "
        "64-bit DCT hashes, smallest over the full image and its central crops). Identical pixels count as 0.",
        "## Per source",
        summary_table(values),
        _listing("Skipped files", ["file", "reason"], skipped),
        _listing("Converted to RGB", ["file", "conversion"], converted),
        _listing("Duplicates removed from training", ["removed", "kept copy", "kind", "distance"], duplicates),
        _listing(
            "Leakage: training images matching an evaluation image", ["training", "evaluation", "distance"], leaks
        ),
    ]
    return "\n\n".join(parts) + "\n"


def _listing(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    heading = f"## {title} ({len(rows)})"
    if not rows:
        return f"{heading}\n\nNone."
    cut = f"\n\n{len(rows) - MAX_ROWS} more in the merged manifest." if len(rows) > MAX_ROWS else ""
    return f"{heading}\n\n{_table(headers, rows[:MAX_ROWS])}{cut}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
