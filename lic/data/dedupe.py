"""The dedupe stage: merge the active sources' manifests and decide which training images to keep.

Order of decisions, each on what the previous left:
1. leakage: a training image whose pixels equal, or whose perceptual hash is within `leakage_threshold` of, an
   evaluation image (Kodak, CLIC, or the sample's eval split) is removed; evaluating on trained-on images would
   flatter every rate-distortion number;
2. exact duplicates (same decoded pixels), within and across sources;
3. near duplicates (perceptual distance <= `near_threshold`), within and across sources.
Of each group the best copy is kept: most pixels, then the source listed first in the profile, then the path.
An image is dropped only for a neighbour that is itself kept, so chains (A~B, B~C, A far from C) keep A and C.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lic.data import report
from lic.data.manifest import FIELDS, SCHEMA_VERSION, manifest_path, read_manifest, write_table
from lic.data.neighbours import Hashes, near_pairs
from lic.io.atomic import write_text
from lic.io.progress import say
from lic.params import Params

KEPT, LEAKAGE, EXACT, NEAR = "kept", "leakage", "exact duplicate", "near duplicate"
DEDUP_FIELDS = [
    pa.field("dedup", pa.string()),  # for usable training images: kept | leakage | exact duplicate | near duplicate
    pa.field("duplicate_of", pa.string()),  # path of the kept (or evaluation) image it duplicates
    pa.field("distance", pa.int32()),  # Hamming distance to it (0 for identical pixels)
]
MERGED_SCHEMA = pa.schema(FIELDS + DEDUP_FIELDS, metadata={"lic.manifest": SCHEMA_VERSION})


def run_dedupe(params: Params) -> dict[str, Any]:
    """Write the merged, training and evaluation manifests, the metrics JSON and the report; return the metrics."""
    data = params.data
    sources = params.active_sources
    merged = pa.concat_tables([read_manifest(manifest_path(data, source)) for source in sources])
    thresholds = data.dedupe
    merged = decide(merged, sources, thresholds.near_threshold, thresholds.leakage_threshold)
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


def decide(table: pa.Table, sources: list[str], near_threshold: int, leakage_threshold: int) -> pa.Table:
    """`table` with the dedup, duplicate_of and distance columns filled in for usable training images."""
    columns = table.to_pydict()
    rank_of_source = {name: rank for rank, name in enumerate(sources)}
    usable = [status == "ok" for status in columns["status"]]
    evals = [i for i, ok in enumerate(usable) if ok and columns["split"][i] == "eval"]
    train = sorted(
        (i for i, ok in enumerate(usable) if ok and columns["split"][i] == "train"),
        key=lambda i: (
            -columns["width"][i] * columns["height"][i],
            rank_of_source[columns["source"][i]],
            columns["path"][i],
        ),
    )
    verdict: dict[int, tuple[str, int | None, int | None]] = {}

    eval_by_pixels = {columns["pixel_sha256"][e]: e for e in evals}
    for i in train:
        if columns["pixel_sha256"][i] in eval_by_pixels:
            verdict[i] = (LEAKAGE, eval_by_pixels[columns["pixel_sha256"][i]], 0)
    candidates = np.array([i for i in train if i not in verdict], dtype=np.int64)
    if len(candidates) and evals:
        ti, ej, dist = near_pairs(_hashes(columns, candidates), _hashes(columns, evals), leakage_threshold)
        for t, e, d in sorted(zip(ti.tolist(), ej.tolist(), dist.tolist(), strict=True), key=lambda x: x[2]):
            verdict.setdefault(int(candidates[t]), (LEAKAGE, evals[e], d))

    first_by_pixels: dict[str, int] = {}
    for i in train:
        if i not in verdict:
            pixels = columns["pixel_sha256"][i]
            if pixels in first_by_pixels:
                verdict[i] = (EXACT, first_by_pixels[pixels], 0)
            else:
                first_by_pixels[pixels] = i

    remaining = np.array([i for i in train if i not in verdict], dtype=np.int64)  # still in keep-preference order
    earlier = defaultdict(list)
    if len(remaining):
        pi, pj, dist = near_pairs(_hashes(columns, remaining), None, near_threshold)
        for p, q, d in zip(pi.tolist(), pj.tolist(), dist.tolist(), strict=True):
            earlier[q].append((d, p))
    for q, i in enumerate(remaining.tolist()):
        kept = sorted((d, p) for d, p in earlier[q] if verdict[int(remaining[p])][0] == KEPT)
        verdict[i] = (NEAR, int(remaining[kept[0][1]]), kept[0][0]) if kept else (KEPT, None, None)

    dedup, duplicate_of, distance = [None] * len(usable), [None] * len(usable), [None] * len(usable)
    for i, (kind, other, d) in verdict.items():
        dedup[i], distance[i] = kind, d
        duplicate_of[i] = None if other is None else columns["path"][other]
    say(f"dedupe: {sum(v[0] == KEPT for v in verdict.values())} of {len(train)} usable training images kept")
    return pa.Table.from_pydict(
        {**columns, "dedup": dedup, "duplicate_of": duplicate_of, "distance": distance}, schema=MERGED_SCHEMA
    )


def _hashes(columns: dict[str, list], rows) -> Hashes:
    return Hashes.from_hex([columns["phash"][i] for i in rows], [columns["phash_zoom"][i] for i in rows])
