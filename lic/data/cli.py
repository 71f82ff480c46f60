"""`lic data`: the dataset stages by hand (the DVC stages run the same functions through pipelines/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="data",
    help="Datasets: fetch, describe and deduplicate the training and evaluation images (docs/datasets.md).",
    no_args_is_help=True,
)
ParamsOption = Annotated[Path, typer.Option("--params", help="The params file to read.")]


@app.command()
def fetch(
    source: Annotated[str, typer.Argument(help="A source of data.sources in params.yaml.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Download (or copy), verify and place one source under data/raw/<source>."""
    from lic.data.fetch import fetch_source
    from lic.params import load_params

    typer.echo(fetch_source(load_params(params), source))


@app.command()
def manifest(
    source: Annotated[str, typer.Argument(help="A fetched source.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Decode and hash every file of a fetched source into its Parquet manifest."""
    from lic.data.manifest import build_manifest
    from lic.params import load_params

    typer.echo(build_manifest(load_params(params), source))


@app.command()
def dedupe(params: ParamsOption = Path("params.yaml")) -> None:
    """Merge the active profile's manifests, drop duplicates and leaked evaluation images, write the report."""
    from lic.data.dedupe import run_dedupe
    from lic.params import load_params

    run_dedupe(load_params(params))


@app.command()
def shard(params: ParamsOption = Path("params.yaml")) -> None:
    """Write the training images into the FFCV shards and hold out the validation images (docs/data-loading.md)."""
    from lic.data.shards import build_shards
    from lic.params import load_params

    build_shards(load_params(params))


@app.command("ensure-datasets")
def ensure_datasets() -> None:
    """Restore the empty datasets/ folder a fresh clone lacks, or say how to pull the team's."""
    from lic.data.snapshot import ensure_datasets as ensure

    typer.echo(ensure())
