"""`dvc plots show` draws readable RD plots offline: headless Chromium renders the page with no network at all,
one colour per codec, and the page loads no script from anywhere but itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lic.eval.report import _curve_table
from tests.data_support import dvc_project, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
]
# vega's default categorical colours, in the order the legend assigns them (codecs sorted by name)
CATEGORY10 = ["#4c78a8", "#f58518", "#e45756", "#72b7b2"]


def _points() -> pd.DataFrame:
    """Four codecs' RD points on one dataset, shaped as the report stage's curve_points."""
    rows = []
    for offset, codec in enumerate(["avif", "jpeg", "loclic-mse", "webp"]):
        for setting, bpp in enumerate([0.2, 0.5, 1.0]):
            psnr = 26 + 4 * np.log2(bpp / 0.2) + offset
            rows.append(
                {
                    "codec": codec,
                    "setting": str(setting),
                    "bpp": bpp,
                    "psnr": psnr,
                    "ms_ssim": 0.9 + 0.02 * setting + 0.005 * offset,
                }
            )
    return pd.DataFrame(rows)


def _screenshot(page: Path, shot: Path) -> Image.Image:
    """Chromium with every network request sent to a closed port: only what the page carries can load."""
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=10000",
         "--window-size=1100,520", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return Image.open(shot).convert("RGB")


def _has_colour(pixels: np.ndarray, hex_colour: str, tolerance: int = 12) -> bool:
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels.astype(int) - target).max(axis=2) <= tolerance).sum() > 30)


def test_rd_plots_render_offline_with_a_colour_per_codec(tmp_path) -> None:
    project = dvc_project(tmp_path / "project")
    curves = project / "outputs" / "report" / "curves"
    curves.mkdir(parents=True)
    _curve_table(_points(), {}).to_csv(curves / "sample.csv", index=False)
    out = project / "dvc_plots"
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)], project)
    page = out / "index.html"
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=", html), "the page loads a script from elsewhere"
    assert "rate (bits per pixel)" in html and "MS-SSIM (dB, -10 log10(1 - MS-SSIM))" in html and "PSNR (dB" in html

    pixels = np.asarray(_screenshot(page, tmp_path / "rd.png"))
    drawn = (pixels.min(axis=2) < 200).mean()
    assert drawn > 0.01, f"the page is blank ({drawn:.2%} of pixels drawn)"
    missing = [colour for colour in CATEGORY10 if not _has_colour(pixels, colour)]
    assert not missing, f"codec colours not drawn: {missing}"
