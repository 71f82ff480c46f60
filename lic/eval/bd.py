"""Bjøntegaard deltas of one RD curve against an anchor curve, through the `bjontegaard` package.

A curve is the Pareto frontier of its points (sorted by rate, each point better than every cheaper one): an
encoder never picks a setting that another one beats at a lower rate, and the interpolation needs both axes
strictly increasing. BD-rate is the average rate difference (%) at equal quality over the overlapping quality
range, BD-PSNR the average PSNR difference (dB) at equal rate; MS-SSIM enters BD-rate in dB,
-10 log10(1 - MS-SSIM), as in the literature. When a value cannot be computed (fewer than two frontier points,
curves that do not overlap) it is None and `notes` says why, instead of a number that means nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from bjontegaard import bd_psnr, bd_rate

METHOD = "pchip"  # matches the JCT-VC reference spreadsheet to 10 decimals (bjontegaard's documentation)


def frontier(points: pd.DataFrame, quality: str) -> pd.DataFrame:
    """The points no cheaper point beats on `quality`, sorted by bpp."""
    kept, best = [], -math.inf
    for index, row in points.dropna(subset=[quality]).sort_values(["bpp", quality]).iterrows():
        if row[quality] > best:
            kept.append(index)
            best = row[quality]
    return points.loc[kept]


def quality_values(points: pd.DataFrame, column: str) -> np.ndarray:
    """PSNR as is; MS-SSIM in dB, -10 log10(1 - MS-SSIM), which spreads the values near 1 as BD needs."""
    values = points[column].to_numpy(dtype=float)
    return -10 * np.log10(1 - values) if column == "ms_ssim" else values


DELTAS = (("bd_rate", bd_rate, "psnr"), ("bd_psnr", bd_psnr, "psnr"), ("bd_rate_ms_ssim", bd_rate, "ms_ssim"))
MIN_OVERLAP = 0.75  # bjontegaard's own warning threshold


def bd_metrics(anchor: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """{bd_rate, bd_psnr, bd_rate_ms_ssim, notes} of `test` against `anchor` (None where undefined)."""
    result: dict[str, Any] = {"notes": []}
    for key, function, column in DELTAS:
        result[key] = None
        a, t = frontier(anchor, column), frontier(test, column)
        if min(len(a), len(t)) < 2:
            result["notes"].append(f"{key}: needs two rate points per curve (anchor {len(a)}, test {len(t)})")
            continue
        qa, qt = quality_values(a, column), quality_values(t, column)
        # BD-PSNR integrates over log rate, the BD-rates over quality: the overlap that matters differs
        shared = overlap(np.log10(a["bpp"]), np.log10(t["bpp"])) if function is bd_psnr else overlap(qa, qt)
        if shared == 0:
            result["notes"].append(f"{key}: the curves do not overlap")
            continue
        if shared < MIN_OVERLAP:
            result["notes"].append(f"{key}: the curves overlap on only {shared:.0%} of their range")
        value = function(a["bpp"], qa, t["bpp"], qt, METHOD, require_matching_points=False, min_overlap=0)
        result[key] = round(float(value), 4)
    return result


def overlap(a, b) -> float:
    """Shared fraction of the two value ranges, 0 when they are disjoint (what bjontegaard warns about)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    total = max(a.max(), b.max()) - min(a.min(), b.min())
    shared = min(a.max(), b.max()) - max(a.min(), b.min())
    return max(shared, 0.0) / total if total > 0 else 0.0
