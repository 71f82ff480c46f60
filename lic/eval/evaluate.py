"""`lic evaluate` and the evaluate@<key> stage: one checkpoint, every evaluation image, real bitstreams.

Each image goes through `lic.codec.encode` to the bytes a user would store and back through `lic.codec.decode`,
so bpp is the file size (header included) and quality is that of the decoded 8-bit image, never a likelihood
estimate. Outputs, in one folder: `images.csv` (a row per image), `results.json` (the model, its checkpoint
metadata, complexity, which images were used, and the means per dataset; also the stage's DVC metrics) and
`rd.png` (every image's rate and quality, with the dataset means).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from lic.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lic.codec import decode, encode
from lic.complexity import measure as measure_complexity
from lic.eval.evalset import EvalSet, load_eval_set
from lic.eval.measure import METRICS, Decode, Encode, curve_points, measure_all, to_frame
from lic.eval.plots import Series, save_rd_figure
from lic.io.atomic import atomic_path, write_text
from lic.io.checksums import file_digest
from lic.params import Params

RESULTS, IMAGES, FIGURE = "results.json", "images.csv", "rd.png"


def codec_label(model_name: str, metadata: dict[str, Any]) -> str:
    """`loclic-mse`: the model and the distortion it was trained for, i.e. which RD curve its points belong to."""
    metric = metadata.get("metric")
    return f"{model_name}-{metric}" if metric else model_name


def setting_label(metadata: dict[str, Any], checkpoint: Path) -> str:
    """The rate point's name: the lambdas-table key training recorded, else the lambda, else the file name."""
    if "key" in metadata:
        return str(metadata["key"])
    return f"{metadata['lmbda']:g}" if "lmbda" in metadata else checkpoint.stem


def evaluate_checkpoint(
    checkpoint: Path | str,
    manifest: Path | str,
    out_dir: Path | str,
    setting: str | None = None,
    *,
    complexity_size: int,
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate one checkpoint on the evaluation manifest and write images.csv, results.json and rd.png."""
    model, metadata = load_checkpoint(checkpoint)
    images = load_eval_set(manifest, limit)
    codec = codec_label(model.spec.name, metadata)
    setting = setting or setting_label(metadata, Path(checkpoint))
    table = to_frame(measure_all(codec, setting, *_codec_functions(model), images))
    complexity = measure_complexity(model, complexity_size)
    results = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(Path(checkpoint), "sha256"),
        "model": model.spec.name,
        "config": model.spec.config,
        "metadata": metadata,
        "codec": codec,
        "setting": setting,
        "complexity": {key: getattr(complexity, key) for key in ("kmac_per_pixel", "parameters", "height", "width")},
        "eval_sets": images.fingerprints(),
        "datasets": dataset_means(table),
    }
    write_outputs(Path(out_dir), table, results, images)
    return results


def evaluate_rate_point(params: Params, key: str) -> dict[str, Any]:
    """The evaluate@<key> stage: the checkpoint training wrote for `key`, into <evaluate.out_dir>/<key>/."""
    params.lmbda(key)  # a key outside the lambdas table is a user error, not a missing file
    return evaluate_checkpoint(
        Path(params.train.outputs) / key / CHECKPOINT_FILE,
        params.data.paths.eval,
        Path(params.evaluate.out_dir) / key,
        setting=key,
        complexity_size=params.evaluate.complexity_size,
    )


def _codec_functions(model: nn.Module) -> tuple[Encode, Decode]:
    """The model as a codec for the measurement loop: the .lic file bytes, and the decoded RGB pixels."""

    def encode_pixels(pixels: np.ndarray) -> bytes:
        return encode(pixels, model)

    def decode_pixels(data: bytes) -> np.ndarray:
        return np.asarray(decode(data, model).convert("RGB"))

    return encode_pixels, decode_pixels


def dataset_means(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{dataset: {images, bpp, psnr, ms_ssim, encode_s, decode_s}}: means of the per-image values."""
    points = curve_points(table).set_index("dataset")
    return {
        dataset: {"images": int(row["images"]), **{metric: float(row[metric]) for metric in METRICS}}
        for dataset, row in points.iterrows()
    }


def write_outputs(out_dir: Path, table: pd.DataFrame, results: dict[str, Any], images: EvalSet) -> None:
    with atomic_path(out_dir / IMAGES) as tmp:
        table.to_csv(tmp, index=False)
    write_text(out_dir / RESULTS, json.dumps(results, indent=2) + "\n")
    series = []
    for dataset in images.datasets:
        rows = table[table["dataset"] == dataset]
        series.append(Series(f"{dataset}: {len(rows)} images", rows, "images"))
        series.append(Series(f"{dataset}: mean", curve_points(rows)))
    title = f"{results['codec']} {results['setting']}: every evaluation image (real bitstreams)"
    save_rd_figure(series, title, out_dir / FIGURE)


def read_results(out_dir: Path | str) -> tuple[dict[str, Any], pd.DataFrame]:
    """The results.json and images.csv an evaluation wrote."""
    out_dir = Path(out_dir)
    return json.loads((out_dir / RESULTS).read_text()), pd.read_csv(out_dir / IMAGES)
