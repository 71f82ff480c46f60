"""`lic evaluate`: one checkpoint on the evaluation images, by hand (the evaluate@<key> stage runs the same)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A lic checkpoint (e.g. outputs/train/l0130/model.pt).")],
    manifest: Annotated[
        Path | None, typer.Option(help="Evaluation manifest (default: data.paths.eval of the params file).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", "-o", help="Output folder (default: <evaluate.out_dir>/<folder>).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N images of each dataset.")] = None,
    params: Annotated[Path, typer.Option("--params", help="The params file to read.")] = Path("params.yaml"),
) -> None:
    """Code every evaluation image for real: bpp, PSNR, MS-SSIM, timings; writes results.json, images.csv, rd.png."""
    from lic.eval.evaluate import evaluate_checkpoint
    from lic.params import load_params

    settings = load_params(params)
    manifest = manifest or Path(settings.data.paths.eval)
    out_dir = out_dir or Path(settings.evaluate.out_dir) / checkpoint.resolve().parent.name
    results = evaluate_checkpoint(
        checkpoint, manifest, out_dir, complexity_size=settings.evaluate.complexity_size, limit=limit
    )
    for dataset, means in results["datasets"].items():
        typer.echo(
            f"{dataset}: {means['images']} images, {means['bpp']:.4f} bpp, {means['psnr']:.2f} dB PSNR, "
            f"MS-SSIM {means['ms_ssim']:.4f}, encode {means['encode_s']:.2f} s, decode {means['decode_s']:.2f} s"
        )
    typer.echo(f"{results['complexity']['kmac_per_pixel']:.1f} kMAC/pixel; written to {out_dir}")
