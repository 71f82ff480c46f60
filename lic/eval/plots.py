"""Rate-distortion figures (PSNR-bpp and MS-SSIM-bpp side by side) as PNG, with matplotlib's Agg backend.

MS-SSIM is drawn in dB (lic.eval.metrics.ms_ssim_db), as CompressAI's plots and the DVC plots do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: stages and CI have no display

import matplotlib.pyplot as plt
import pandas as pd

from lic.eval.metrics import ms_ssim_db
from lic.io.atomic import atomic_path

PANELS = (("psnr", "PSNR (dB, RGB, peak 255)"), ("ms_ssim_db", "MS-SSIM (dB, -10 log10(1 - MS-SSIM), RGB)"))
STYLES = {
    "measured": {"marker": "o", "linestyle": "-"},
    "reference": {"marker": "x", "linestyle": "--", "alpha": 0.8},
    "images": {"marker": ".", "linestyle": "none", "alpha": 0.4},
}


@dataclass(frozen=True)
class Series:
    """One line or point cloud: columns bpp, psnr and ms_ssim (ms_ssim may be missing for published points)."""

    label: str
    points: pd.DataFrame
    kind: str = "measured"  # measured | reference | images


def save_rd_figure(series: Sequence[Series], title: str, path: Path) -> Path:
    """Draw every series on both panels, sorted by rate, and write the PNG atomically."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, (column, label) in zip(axes, PANELS, strict=True):
        for item in series:
            points = item.points
            if "ms_ssim" in points:
                points = points.assign(ms_ssim_db=points["ms_ssim"].map(ms_ssim_db))
            if column not in points or points[column].isna().all():
                continue
            points = points.dropna(subset=[column]).sort_values("bpp")
            axis.plot(points["bpp"], points[column], label=item.label, **STYLES[item.kind])
        axis.set_xlabel("rate (bits per pixel, whole file)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path
