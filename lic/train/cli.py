"""`lic train`: train (or resume) one lambda's model by hand; the train@<key> stage runs the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lic.errors import LicError


def train(
    lmbda: Annotated[float | None, typer.Option(help="Rate-distortion lambda (default: the key's).")] = None,
    metric: Annotated[str | None, typer.Option(help="mse or ms-ssim (default: the key's, else mse).")] = None,
    key: Annotated[str | None, typer.Option(help="Entry of the lambdas table; names the run and outputs.")] = None,
    params: Annotated[Path, typer.Option("--params", "--config", help="The params file to read.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Train one model with Ray Train, resuming its run if it has checkpoints (docs/training.md)."""
    from lic.params import load_params
    from lic.train.driver import train as train_run

    if key is None and lmbda is None:
        raise LicError("give --key (an entry of the lambdas table in params.yaml) or --lmbda")
    typer.echo(train_run(load_params(params), key=key, lmbda=lmbda, metric=metric))


def publish_shards(
    to: Annotated[str | None, typer.Option(help="Where to (default: LIC_SHARDS_REMOTE, else shards.remote).")] = None,
    params: Annotated[Path, typer.Option("--params", help="The params file to read.")] = Path("params.yaml"),
) -> None:
    """Upload the shard folder (shards.dir) to object storage, for nodes that stage it (docs/training.md)."""
    from lic.params import load_params
    from lic.train.staging import publish

    config = load_params(params).shards  # LIC_SHARDS_REMOTE already applied: lic.params.ENV_OVERRIDES
    uri = to or config.remote
    if not uri:
        raise LicError("nowhere to publish: give --to, set LIC_SHARDS_REMOTE or shards.remote")
    checksums = publish(Path(config.dir), uri)
    size = sum(entry.bytes for entry in checksums.values())
    typer.echo(f"published {len(checksums)} files ({size / 1e9:.2f} GB) of {config.dir} to {uri}")
