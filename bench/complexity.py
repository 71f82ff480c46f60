"""Complexity table: true MACs per pixel and parameters, LoC-LIC against the CompressAI baselines."""

from __future__ import annotations

from pathlib import Path

from bench.common import Section, table
from lic.complexity import COUNTER, measure
from lic.models import build

# Baselines at their largest configuration (N=192/M=320 class), cheng2020-anchor also at quality 3 (N=128).
MODELS = [
    ("loclic", {}),
    ("mlicpp", {}),
    ("bmshj2018-factorized", {"quality": 8}),
    ("bmshj2018-hyperprior", {"quality": 8}),
    ("mbt2018-mean", {"quality": 8}),
    ("mbt2018", {"quality": 8}),
    ("cheng2020-anchor", {"quality": 3}),
    ("cheng2020-anchor", {"quality": 6}),
]
SIZES = [(256, 256), (512, 768)]
PUBLISHED = Path(__file__).parent / "reference" / "complexity.csv"
PUBLISHED_NAMES = {"loclic": "LoC-LIC", "mlicpp": "MLIC++"}


def _published() -> dict[str, str]:
    """model -> "value (variant, counter); ...". The variant column holds unquoted commas, so split from both ends."""
    figures: dict[str, list[str]] = {}
    lines = [line for line in PUBLISHED.read_text().splitlines() if line and not line.startswith("#")]
    for line in lines[1:]:
        model, *variant, counter, kmac = line.split(",")
        figures.setdefault(model, []).append(f"{kmac} ({','.join(variant)}, {counter})")
    return {name: "; ".join(values) for name, values in figures.items()}


def run() -> Section:
    published = _published()
    rows, data = [], {}
    for name, config in MODELS:
        label = name + (f" q{config['quality']}" if config else "")
        model = build(name, **config)
        results = [measure(model, h, w) for h, w in SIZES]
        data[label] = [r.as_dict() for r in results]
        rows.append(
            [label, *(f"{r.kmac_per_pixel:.1f}" for r in results), f"{results[0].parameters / 1e6:.2f} M",
             published.get(PUBLISHED_NAMES.get(name, name), "")]
        )  # fmt: skip
    loclic = data["loclic"][0]["kmac_per_pixel"]
    markdown = (
        f"Counter: {COUNTER}, one eval-mode forward pass (transforms, hyperprior, entropy model). "
        "Published figures from `bench/reference/complexity.csv` (thop counts transposed convolutions at output "
        "size, so it reads 2-2.5x higher for the Ballé/Minnen baselines).\n\n"
        + table(["model", "kMAC/px 256x256", "kMAC/px 768x512", "parameters", "published kMAC/px"], rows)
        + f"\n\nLoC-LIC needs {data['cheng2020-anchor q6'][0]['kmac_per_pixel'] / loclic:.2f}x fewer MACs than "
        f"cheng2020-anchor quality 6 and {data['mlicpp'][0]['kmac_per_pixel'] / loclic:.2f}x fewer than MLIC++ "
        "(2024 code; the 1,256 of the LoC-LIC paper is the 2023 variant with the heavier LRP)."
    )
    return Section("Complexity", markdown, data)
