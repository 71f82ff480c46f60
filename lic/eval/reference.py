"""Published rate-distortion points (MLIC++ results JSON, LoC-LIC read off its paper's figures), for the plots.

They are drawn only on the dataset they were measured on, mapped by params (report.references: manifest
source -> dataset name in the CSV): the sample photographs get none, because no published curve is about them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

RD_POINTS = Path(__file__).parent / "reference" / "rd_points.csv"


def reference_points(dataset: str, names: dict[str, str], path: Path = RD_POINTS) -> dict[str, pd.DataFrame]:
    """{model: points} published for `dataset` (a manifest source), empty when nothing was published for it."""
    if dataset not in names:
        return {}
    table = pd.read_csv(path, comment="#")
    table = table[table["dataset"] == names[dataset]]
    return {model: points.sort_values("bpp") for model, points in table.groupby("model", sort=True)}
