"""The dedupe stage's report: counts as DVC metrics (JSON), and a Markdown table a person reads.

The metrics hold numbers only, so `dvc metrics show/diff` can compare runs; the Markdown lists every skipped,
converted, duplicate and leaked file with its reason (long lists are cut, the merged manifest has them all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lic.data.schemas import location

MAX_ROWS = 1000  # per listing; a full-corpus run can skip tens of thousands of files
DISTANCES = ["distance (64 bits)", "distance (256 bits)"]  # the search's and the confirmation's, per removed image
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
_DEDUP_COUNT = {  # the dedup verdict -> its count
    "kept": "kept",
    "exact duplicate": "exact_duplicates",
    "near duplicate": "near_duplicates",
    "leakage": "leakage",
}


def _flags(merged: pa.Table) -> dict[str, pa.ChunkedArray]:
    """Per row, one boolean for each count of COUNTS: what the metrics sum and the listings filter on."""
    ok = pc.equal(merged["status"], "ok")

    def among_ok(condition: pa.ChunkedArray) -> pa.ChunkedArray:
        return pc.and_(ok, pc.fill_null(condition, False))

    return {
        "files": pc.is_valid(merged["source"]),
        "ok": ok,
        "converted": among_ok(pc.not_equal(merged["note"], "")),
        "skipped": pc.invert(ok),
        "train": among_ok(pc.equal(merged["split"], "train")),
        "eval": among_ok(pc.equal(merged["split"], "eval")),
        **{key: among_ok(pc.equal(merged["dedup"], verdict)) for verdict, key in _DEDUP_COUNT.items()},
    }


def metrics(merged: pa.Table, sources: list[str]) -> dict[str, Any]:
    """Counts per source and in total, and skipped files per reason.

    Arrow throughout (a group-by over flag columns): a full-corpus manifest has 1.5 M rows, which as Python dicts
    would cost the driver gigabytes."""
    flags = _flags(merged)
    table = pa.table({"source": merged["source"], **{key: flag.cast(pa.int64()) for key, flag in flags.items()}})
    sums = table.group_by("source").aggregate([(key, "sum") for key in flags]).to_pylist()  # a row per source
    per_source = {source: dict.fromkeys((key for key, _ in COUNTS), 0) for source in sources}
    for row in sums:
        per_source[row.pop("source")].update({key.removesuffix("_sum"): value for key, value in row.items()})
    total = {key: sum(counts[key] for counts in per_source.values()) for key, _ in COUNTS}
    # `skipped: too small (100x80, ...)` -> `too small`
    reasons = pc.replace_substring_regex(pc.filter(merged["status"], flags["skipped"]), r"(?s)^skipped: | \(.*$", "")
    counted = pc.value_counts(reasons).to_pylist()
    skipped_by_reason = dict(sorted((entry["values"], entry["counts"]) for entry in counted))
    return {"sources": per_source, "total": total, "skipped_by_reason": skipped_by_reason}


def to_json(values: dict[str, Any]) -> str:
    return json.dumps(values, indent=2) + "\n"


def summary_table(values: dict[str, Any]) -> str:
    """The per-source counts as a Markdown table (also printed at the end of the stage)."""
    rows = [[name, *(counts[key] for key, _ in COUNTS)] for name, counts in values["sources"].items()]
    rows.append(["**total**", *(values["total"][key] for key, _ in COUNTS)])
    return _table(["source", *(title for _, title in COUNTS)], rows)


def markdown(merged: pa.Table, values: dict[str, Any], profile: str, thresholds: dict[str, Any]) -> str:
    flags = _flags(merged)
    merged = merged.append_column("where", location(merged))
    merged = merged.append_column("reason", pc.replace_substring_regex(merged["status"], "^skipped: ", ""))
    skipped = _rows(merged, flags["skipped"], ["where", "reason"])
    converted = _rows(merged, flags["converted"], ["where", "note"])
    removed = pc.or_(flags["exact_duplicates"], flags["near_duplicates"])
    duplicates = _rows(merged, removed, ["where", "duplicate_of", "dedup", "distance", "distance256"])
    leaks = _rows(merged, flags["leakage"], ["where", "duplicate_of", "distance", "distance256"])
    confirm = thresholds["confirm"]
    parts = [
        f"# Datasets report: profile `{profile}`",
        f"Near duplicates: perceptual hashes within {thresholds['near_threshold']} bits; leakage: a training "
        f"image within {thresholds['leakage_threshold']} bits of an evaluation image (Hamming distance of "
        "64-bit DCT hashes, smallest over the full image and its central crops), confirmed by 256-bit DCT hashes "
        f"of the same views within {confirm['near_threshold']} and {confirm['leakage_threshold']} bits. Identical "
        "pixels count as 0.",
        "## Per source",
        summary_table(values),
        _listing("Skipped files", ["file", "reason"], skipped),
        _listing("Converted to RGB", ["file", "conversion"], converted),
        _listing("Duplicates removed from training", ["removed", "kept copy", "kind", *DISTANCES], duplicates),
        _listing(
            "Leakage: training images matching an evaluation image", ["training", "evaluation", *DISTANCES], leaks
        ),
    ]
    return "\n\n".join(parts) + "\n"


@dataclass(frozen=True)
class _Listing:
    """The first MAX_ROWS rows of one listing (as Python lists) and how many there are in all."""

    rows: list[list[Any]]
    count: int


def _rows(table: pa.Table, where: pa.ChunkedArray, columns: list[str]) -> _Listing:
    """Only the rows a listing shows become Python objects: a full-corpus run removes tens of thousands."""
    selected = table.select(columns).filter(where)
    head = selected.slice(0, MAX_ROWS).to_pylist()
    return _Listing([[row[column] for column in columns] for row in head], len(selected))


def _listing(title: str, headers: list[str], listing: _Listing) -> str:
    heading = f"## {title} ({listing.count})"
    if not listing.count:
        return f"{heading}\n\nNone."
    cut = f"\n\n{listing.count - MAX_ROWS} more in the merged manifest." if listing.count > MAX_ROWS else ""
    return f"{heading}\n\n{_table(headers, listing.rows)}{cut}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
