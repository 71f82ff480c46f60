"""`lic register` and `lic pull`: the MLflow model registry by hand (docs/registry.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(
    checkpoint: Annotated[Path, typer.Argument(help="A lic checkpoint with lmbda and metric in its metadata.")],
    eval_dir: Annotated[Path, typer.Option("--eval", help="Its `lic evaluate` output folder.")],
    experiment: Annotated[
        str | None,
        typer.Option(
            help="MLflow experiment of a checkpoint without a training run in the store (default: registry.experiment)."
        ),
    ] = None,
    promote: Annotated[bool, typer.Option(help="Run the promotion gate for the champion alias.")] = True,
    tolerance: Annotated[
        float | None, typer.Option(help="Promote if J <= champion's J * (1 + tolerance) (default: from params).")
    ] = None,
    floor: Annotated[
        str | None,
        typer.Option(
            help="Anchor codec a champion must beat on the same images, measured by the anchors stage "
            "(default: registry.quality_floor; 'none': no floor)."
        ),
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="The params file to read.")] = Path("params.yaml"),
) -> None:
    """Register a checkpoint as a new version (alias candidate) and gate its promotion to champion."""
    from lic.params import load_params
    from lic.registry.register import floor_of, register_checkpoint

    settings = load_params(params)
    experiment = experiment or settings.registry.experiment
    tolerance = settings.registry.promotion_tolerance if tolerance is None else tolerance
    registration = register_checkpoint(
        checkpoint,
        eval_dir,
        experiment,
        quality_floor=floor_of(settings, floor),
        tolerance=tolerance,
        gate=promote,
    )
    typer.echo(f"{registration.uri}{'' if registration.new else ' (already registered)'}")
    if registration.decision is not None:
        verdict = "champion" if registration.decision.promoted else "not promoted (use @candidate to try it)"
        typer.echo(f"{verdict}: {registration.decision.reason}")


def pull(
    uri: Annotated[str, typer.Argument(help="models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/<path>")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder (default: ./<name>-v<version>).")] = None,
) -> None:
    """Download a registered model for offline use: the MLflow model plus model.pt for `lic compress --model`."""
    from lic.registry.downloads import pull as pull_model

    typer.echo(pull_model(uri, out))
