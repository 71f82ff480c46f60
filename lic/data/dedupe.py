"""The dedupe stage: merge the active sources' manifests and decide which training images to keep.

Order of decisions, each on what the previous left:
1. leakage: a training image whose pixels equal, or whose perceptual hash is within `leakage_threshold` of, an
   evaluation image (Kodak, CLIC, or the sample's eval split) is removed; evaluating on trained-on images would
   flatter every rate-distortion number;
2. exact duplicates (same decoded pixels), within and across sources;
3. near duplicates (perceptual distance <= `near_threshold`), within and across sources.
A perceptual pair counts only when it is confirmed: the 64-bit hashes are searched (lic.data.neighbours), and
each pair found must be within `confirm`'s thresholds on the 256-bit hashes as well. At corpus scale 64 bits put
thousands of distinct pairs within 8 by chance; their 256-bit hashes are about 104 of 256 apart, copies' 0-64.
Of each group the best copy is kept: most pixels, then the source listed first in the profile, then the path.
An image is dropped only for a neighbour that is itself kept, so chains (A~B, B~C, A far from C) keep A and C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lic.data import report
from lic.data.manifest import manifest_path
from lic.data.neighbours import Hashes, SearchPlan, near_pairs, pair_distances
from lic.data.schemas import MERGED_SCHEMA, SCHEMA, location, read_table, write_table
from lic.io.atomic import write_text
from lic.io.progress import say
from lic.params import Dedupe, Params

KEPT, LEAKAGE, EXACT, NEAR = "kept", "leakage", "exact duplicate", "near duplicate"


def run_dedupe(params: Params) -> dict[str, Any]:
    """Write the merged, training and evaluation manifests, the metrics JSON and the report; return the metrics."""
    data = params.data
    sources = params.active_sources
    manifests = [read_table(manifest_path(data, name), SCHEMA, f"dvc repro manifest@{name}") for name in sources]
    merged = pa.concat_tables(manifests)
    thresholds = data.dedupe
    merged = decide(merged, sources, thresholds)
    paths = {key: Path(value) for key, value in data.paths.model_dump().items()}
    write_table(merged, paths["merged"])
    write_table(merged.filter(pc.equal(merged["dedup"], KEPT)), paths["train"])
    evaluation = pc.and_(pc.equal(merged["split"], "eval"), pc.equal(merged["status"], "ok"))
    write_table(merged.filter(evaluation), paths["eval"])
    metrics = report.metrics(merged, sources)
    write_text(paths["metrics"], report.to_json(metrics))
    write_text(paths["report"], report.markdown(merged, metrics, params.profile, thresholds.model_dump()))
    say(report.summary_table(metrics))
    return metrics


def decide(table: pa.Table, sources: list[str], thresholds: Dedupe) -> pa.Table:
    """`table` with the dedup, duplicate_of and distance columns filled in for usable training images.

    Columnar throughout (Arrow and numpy; the only Python loop visits images that have an earlier near duplicate),
    so a million rows cost seconds and memory proportional to the rows and pairs."""
    n = len(table)
    ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
    split = table["split"].to_numpy(zero_copy_only=False)
    evals = np.flatnonzero(ok & (split == "eval"))
    train = _keep_preference_order(table, sources, np.flatnonzero(ok & (split == "train")))
    plan = SearchPlan.of(thresholds.search)
    kind = np.full(n, None, dtype=object)
    other = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, -1, dtype=np.int64)
    distance256 = np.full(n, -1, dtype=np.int64)
    verdicts = (kind, other, distance, distance256)
    sha = pc.dictionary_encode(table["pixel_sha256"].combine_chunks())
    sha_code = pc.fill_null(sha.indices, -1).to_numpy()  # null: a skipped file, never a training or eval image

    # 1. leakage: identical pixels to an evaluation image, then perceptually within leakage_threshold
    eval_of_code = np.full(len(sha.dictionary), -1, dtype=np.int64)
    _, last = np.unique(sha_code[evals][::-1], return_index=True)
    eval_of_code[sha_code[evals][::-1][last]] = evals[::-1][last]
    exact_leak = eval_of_code[sha_code[train]] >= 0
    _set(verdicts, train[exact_leak], LEAKAGE, eval_of_code[sha_code[train[exact_leak]]], 0, 0)
    candidates = train[~exact_leak]
    if len(candidates) and len(evals):
        threshold, confirm = thresholds.leakage_threshold, thresholds.confirm.leakage_threshold
        t, e, d, d256 = _confirmed_pairs(table, candidates, evals, threshold, confirm, plan)
        order = np.lexsort((e, d256, d, t))  # per training image: the closest evaluation image, then the first
        t, e, d, d256 = t[order], e[order], d[order], d256[order]
        first = np.ones(len(t), dtype=bool)
        first[1:] = t[1:] != t[:-1]
        _set(verdicts, candidates[t[first]], LEAKAGE, evals[e[first]], d[first], d256[first])

    # 2. exact duplicates: an Arrow group-by on the pixel hash finds each hash's first image in preference order
    remaining = train[kind[train] == None]  # noqa: E711 (numpy comparison, element-wise)
    keyed = pa.table({"pixel_sha256": pc.take(table["pixel_sha256"], remaining), "position": np.arange(len(remaining))})
    firsts = keyed.group_by("pixel_sha256").aggregate([("position", "min")])
    first_position = keyed.join(firsts, "pixel_sha256").sort_by("position")["position_min"].to_numpy()
    duplicate = first_position != np.arange(len(remaining))
    _set(verdicts, remaining[duplicate], EXACT, remaining[first_position[duplicate]], 0, 0)

    # 3. near duplicates: an image goes when an earlier (preferred) image within near_threshold is itself kept
    remaining = remaining[~duplicate]
    kept = np.ones(len(remaining), dtype=bool)
    if len(remaining):
        threshold, confirm = thresholds.near_threshold, thresholds.confirm.near_threshold
        p, q, d, d256 = _confirmed_pairs(table, remaining, None, threshold, confirm, plan)
        order = np.lexsort((p, d256, d, q))  # per later image: its neighbours, closest first
        p, q, d, d256 = p[order], q[order], d[order], d256[order]
        starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]).tolist() if len(q) else []  # no pairs: no groups
        ends = [*starts[1:], len(q)] if starts else []
        for start, end in zip(starts, ends, strict=True):
            alive = np.flatnonzero(kept[p[start:end]])
            if len(alive):
                k = start + int(alive[0])
                kept[q[k]] = False
                _set(verdicts, remaining[q[k] : q[k] + 1], NEAR, remaining[p[k]], d[k], d256[k])
    kind[remaining[kept]] = KEPT

    say(f"dedupe: {int(kept.sum())} of {len(train)} usable training images kept")
    columns = {
        "dedup": pa.array(kind, pa.string()),
        "duplicate_of": pc.take(location(table), pa.array(other, mask=other < 0)),
        "distance": pa.array(distance, pa.int32(), mask=distance < 0),
        "distance256": pa.array(distance256, pa.int32(), mask=distance256 < 0),
    }
    for name, column in columns.items():
        table = table.append_column(name, column)
    return table.cast(MERGED_SCHEMA)


def _keep_preference_order(table: pa.Table, sources: list[str], rows: np.ndarray) -> np.ndarray:
    """`rows` sorted by what is kept first: most pixels, then the source listed first, then path and member."""
    subset = table.select(["width", "height", "source", "path", "member"]).take(rows)
    pixels = pc.multiply(subset["width"].cast(pa.int64()), subset["height"].cast(pa.int64()))
    rank = pc.index_in(subset["source"], value_set=pa.array(sources))
    keys = pa.table({"pixels": pixels, "rank": rank, "path": subset["path"], "member": subset["member"]})
    order = pc.sort_indices(
        keys,
        sort_keys=[("pixels", "descending"), ("rank", "ascending"), ("path", "ascending"), ("member", "ascending")],
    )
    return rows[order.to_numpy()]


def _set(verdicts: tuple[np.ndarray, ...], rows, verdict: str, others, distances, distances256) -> None:
    kind, other, distance, distance256 = verdicts
    kind[rows], other[rows], distance[rows], distance256[rows] = verdict, others, distances, distances256


def _confirmed_pairs(
    table: pa.Table, rows: np.ndarray, others: np.ndarray | None, threshold: int, confirm: int, plan: SearchPlan
) -> tuple[np.ndarray, ...]:
    """(i, j, 64-bit distance, 256-bit distance) of the pairs within `threshold` on the 64-bit hashes and within
    `confirm` on the 256-bit ones: i indexes `rows`, j `others` (None: pairs within `rows`)."""
    coarse, fine = ("phash", 64), ("phash256", 256)
    i, j, d = near_pairs(_hashes(table, rows, *coarse), _hashes(table, others, *coarse), threshold, plan)
    # only the images in a pair have their 256-bit hashes decoded: a few percent of the rows
    i_rows, i_at = np.unique(i, return_inverse=True)
    j_rows, j_at = np.unique(j, return_inverse=True)
    j_table = rows if others is None else others
    d256 = pair_distances(i_at, j_at, _hashes(table, rows[i_rows], *fine), _hashes(table, j_table[j_rows], *fine))
    keep = d256 <= confirm
    return i[keep], j[keep], d[keep], d256[keep]


def _hashes(table: pa.Table, rows: np.ndarray | None, column: str, bits: int) -> Hashes | None:
    if rows is None:
        return None
    return Hashes.from_arrow(pc.take(table[column], rows), pc.take(table[f"{column}_zoom"], rows), bits)
