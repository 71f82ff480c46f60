"""The report stage: every lambda's evaluation and the classical anchors, turned into RD curves and BD numbers.

Per dataset it draws one figure (PSNR-bpp and MS-SSIM-bpp) with the model's curve (one point per lambda), the
peers' curves (other checkpoints evaluated on the same images, such as imported MLIC++ weights: report.peers), the
anchors measured live on the same images, and the published curves when the dataset is the one they were
measured on; it computes BD-rate and BD-PSNR of every curve against the chosen anchor (params: report.anchor),
and checks that each anchor's sweep covers the model's rate range. Outputs, under report.out_dir:
- `metrics/` (DVC metrics): small files of the same few keys, so `dvc metrics show` is a long table rather than a
  wide one: `<dataset>/<codec>-<setting>.json` (bpp, PSNR, MS-SSIM and its dB, timings of each model point),
  `<dataset>/bd/<codec>.json` (BD numbers against the anchor), `complexity/<codec>.json`;
- `curves/<dataset>.csv` (DVC plots, template .dvc/plots/rd.json): every codec's points on that dataset, the
  published ones included, with MS-SSIM in dB;
- `figures/rd_<dataset>.png` and `report.md`: the same for people, with every caveat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lic.errors import LicError
from lic.eval.anchors import ANCHORS_DIR, IMAGES
from lic.eval.bd import bd_metrics
from lic.eval.evaluate import RESULTS, read_results
from lic.eval.measure import curve_points
from lic.eval.metrics import ms_ssim_db
from lic.eval.plots import Series, save_rd_figure
from lic.eval.reference import reference_points
from lic.io.atomic import atomic_path, write_text
from lic.params import Params


def build_report(params: Params) -> dict[str, Any]:
    """Read every evaluate@<key> output, the peers' evaluations and the anchors stage's table; write the report
    (params: report)."""
    eval_dir = Path(params.evaluate.out_dir)
    settings = params.report
    evaluations = [read_results(eval_dir / key) for key in params.lambdas]
    for peer in settings.peers:
        if not (eval_dir / peer / RESULTS).is_file():
            raise LicError(
                f"report.peers: {eval_dir / peer} has no evaluation; run lic evaluate CHECKPOINT -o {eval_dir / peer}"
            )
        evaluations.append(read_results(eval_dir / peer))
    anchors_table = eval_dir / ANCHORS_DIR / IMAGES
    if not anchors_table.is_file():
        raise LicError(f"{anchors_table} not found: run the anchors stage first")
    return write_report(
        evaluations, pd.read_csv(anchors_table), Path(settings.out_dir), settings.anchor, settings.references
    )


def write_report(
    evaluations: list[tuple[dict[str, Any], pd.DataFrame]],
    anchors: pd.DataFrame,
    out_dir: Path,
    anchor: str,
    references: Mapping[str, str],
) -> dict[str, Any]:
    models = pd.concat([table for _, table in evaluations], ignore_index=True)
    if anchor not in set(anchors["codec"]):
        raise LicError(f"report.anchor {anchor!r} was not measured; anchors: {sorted(anchors['codec'].unique())}")
    table = pd.concat([models, anchors], ignore_index=True)
    _check_same_images(table)
    points = curve_points(table)
    metrics: dict[str, Any] = {"anchor": anchor, "complexity": _complexity(evaluations), "datasets": {}}
    notes: list[str] = []
    for dataset, rows in points.groupby("dataset", sort=True):
        published = reference_points(dataset, dict(references))
        section, section_notes = _dataset_section(rows, sorted(models["codec"].unique()), anchor, published)
        metrics["datasets"][dataset] = section
        notes += [f"{dataset}, {note}" for note in section_notes]
        series = [Series(codec, curve) for codec, curve in rows.groupby("codec", sort=True)]
        series += [Series(f"{model} (published)", p, "reference") for model, p in published.items()]
        save_rd_figure(series, f"{dataset}: {section['images']} images", out_dir / "figures" / f"rd_{dataset}.png")
        with atomic_path(out_dir / "curves" / f"{dataset}.csv") as tmp:
            _curve_table(rows, published).to_csv(tmp, index=False, float_format="%.6g")
    write_metric_files(metrics, out_dir / "metrics")
    write_text(out_dir / "report.md", markdown(metrics, notes, references))
    return metrics


def _curve_table(rows: pd.DataFrame, published: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One dataset's points for the DVC plot: measured codecs, then the published curves (setting: the lambda)."""
    references = [
        points.assign(codec=f"{model} (published)", setting=points["lmbda"].map("{:g}".format))
        for model, points in published.items()
    ]
    table = pd.concat([rows, *references], ignore_index=True)[["codec", "setting", "bpp", "psnr", "ms_ssim"]]
    return table.assign(ms_ssim_db=table["ms_ssim"].map(ms_ssim_db)).sort_values(["codec", "bpp"])


def write_metric_files(metrics: Mapping[str, Any], folder: Path) -> None:
    """The report's numbers as DVC metrics: one small file per model point, BD comparison and codec (see above)."""
    files: dict[str, Mapping[str, Any]] = {}
    for codec, complexity in metrics["complexity"].items():
        files[f"complexity/{_slug(codec)}.json"] = {k: complexity[k] for k in ("kmac_per_pixel", "parameters")}
    for dataset, section in metrics["datasets"].items():
        for codec, settings in section["points"].items():
            for setting, point in settings.items():
                files[f"{dataset}/{_slug(codec)}-{setting}.json"] = {
                    **point,
                    "ms_ssim_db": ms_ssim_db(point["ms_ssim"]),
                }
        for codec, bd in section["bd"].items():
            files[f"{dataset}/bd/{_slug(codec)}.json"] = bd
    for name, values in files.items():
        write_text(folder / name, json.dumps(values, indent=2) + "\n")


def _slug(name: str) -> str:
    """A file name for a codec name: "MLIC++ (published)" -> "mlic-published"."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def _check_same_images(table: pd.DataFrame) -> None:
    """Every codec and setting must have coded the same images of a dataset, or their means do not compare."""
    for dataset, rows in table.groupby("dataset"):
        if len({frozenset(group["image"]) for _, group in rows.groupby(["codec", "setting"])}) > 1:
            raise LicError(f"{dataset}: the evaluations and anchors did not code the same images; re-run them")


def _dataset_section(
    rows: pd.DataFrame, model_codecs: list[str], anchor: str, published: dict[str, pd.DataFrame]
) -> tuple[dict[str, Any], list[str]]:
    """One dataset's points, BD numbers against the anchor and anchor coverage; and the caveats."""
    curves = dict(tuple(rows.groupby("codec", sort=True)))
    notes, deltas = [], {}
    for codec, curve in {**curves, **{f"{m} (published)": p for m, p in published.items()}}.items():
        if codec != anchor:
            deltas[codec] = bd_metrics(curves[anchor], curve)
            notes += [f"{codec} vs {anchor}: {note}" for note in deltas[codec].pop("notes")]
    model_rows = rows[rows["codec"].isin(model_codecs)]
    coverage = {codec: _coverage(curve, model_rows) for codec, curve in curves.items() if codec not in model_codecs}
    notes += [
        f"{codec} spans {c['bpp_min']:.3f}-{c['bpp_max']:.3f} bpp, not all of the model's rates"
        for codec, c in coverage.items()
        if not c["covers"]
    ]
    section = {
        "images": int(rows["images"].max()),
        "points": {
            codec: {row["setting"]: _point(row) for _, row in curves[codec].iterrows()} for codec in model_codecs
        },
        "bd": deltas,
        "anchor_coverage": coverage,
    }
    return section, notes


def _point(row: pd.Series) -> dict[str, float]:
    return {key: round(float(row[key]), 6) for key in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")}


def _complexity(evaluations: list[tuple[dict[str, Any], pd.DataFrame]]) -> dict[str, Any]:
    return {results["codec"]: results["complexity"] for results, _ in evaluations}


def _coverage(curve: pd.DataFrame, model_rows: pd.DataFrame) -> dict[str, Any]:
    """An anchor's bpp range, and whether it spans every model point's (else its BD numbers extrapolate less)."""
    low, high = float(curve["bpp"].min()), float(curve["bpp"].max())
    covers = bool(low <= model_rows["bpp"].min() and high >= model_rows["bpp"].max())
    return {"bpp_min": round(low, 6), "bpp_max": round(high, 6), "covers": covers}


def markdown(metrics: dict[str, Any], notes: list[str], references: Mapping[str, str]) -> str:
    anchor = metrics["anchor"]
    lines = ["# Rate-distortion report", ""]
    lines += [
        "Real bitstreams: bpp is the file size over the original pixels; PSNR (peak 255) and MS-SSIM of the decoded",
        "8-bit images; means of the per-image values. BD numbers are against the anchor "
        f"**{anchor}**, measured on the same images (negative BD-rate = fewer bits at equal quality).",
        "",
        "| codec | kMAC/pixel | parameters |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {v['kmac_per_pixel']:.1f} | {v['parameters']:,} |" for c, v in metrics["complexity"].items()]
    for dataset, values in metrics["datasets"].items():
        published = f", published curves: {references[dataset]}" if dataset in references else ""
        lines += ["", f"## {dataset} ({values['images']} images{published})", "", f"![RD](figures/rd_{dataset}.png)"]
        lines += [
            "",
            "| codec | setting | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for codec, settings in values["points"].items():
            for setting, p in settings.items():
                lines.append(
                    f"| {codec} | {setting} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} "
                    f"| {p['encode_s']:.3f} | {p['decode_s']:.3f} |"
                )
        lines += [
            "",
            f"| codec vs {anchor} | BD-rate PSNR (%) | BD-PSNR (dB) | BD-rate MS-SSIM (%) |",
            "|---|---|---|---|",
        ]
        for codec, bd in values["bd"].items():
            cells = [_number(bd[key]) for key in ("bd_rate", "bd_psnr", "bd_rate_ms_ssim")]
            lines.append(f"| {codec} | {' | '.join(cells)} |")
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"
