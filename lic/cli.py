"""The `lic` command line. Sub-commands import their heavy dependencies lazily so `lic --help` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from lic.codec import cli as codec_cli
from lic.data.cli import app as data_app
from lic.errors import LicError
from lic.eval.cli import evaluate
from lic.registry import cli as registry_cli
from lic.stack.cli import app as stack_app
from lic.train.cli import publish_shards, train

app = typer.Typer(
    name="lic",
    help="LoC-LIC: low-complexity learned image coding, and the pipeline that trains and ships it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(codec_cli.compress)
app.command()(codec_cli.decompress)
app.command()(codec_cli.info)
app.add_typer(data_app, name="data")
app.command()(evaluate)
app.command()(registry_cli.register)
app.command()(registry_cli.pull)
app.add_typer(stack_app, name="stack")
app.command()(train)
app.command()(publish_shards)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """LoC-LIC command line."""
    if version:
        from lic import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check that the installed stack works together (versions, native extensions, numpy<2)."""
    from lic.doctor import run_checks

    checks = run_checks()
    if json_out:
        typer.echo(json.dumps(checks, indent=2))
    else:
        for check in checks:
            mark = "ok  " if check["ok"] else "FAIL"
            typer.echo(f"{mark} {check['name']:<14} {check['detail']}")
    if not all(c["ok"] for c in checks):
        raise typer.Exit(1)


@app.command()
def complexity(
    model: Annotated[str, typer.Option(help="Registry name: loclic or a CompressAI baseline.")] = "loclic",
    size: Annotated[int, typer.Option(help="Height of the random test image.")] = 256,
    width: Annotated[int | None, typer.Option(help="Width (default: same as size).")] = None,
    quality: Annotated[int | None, typer.Option(help="Quality level of a CompressAI baseline.")] = None,
    compare: Annotated[bool, typer.Option(help="Also measure cheng2020-anchor quality 6 for reference.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the measurement as JSON.")] = False,
) -> None:
    """Multiply-accumulates per pixel of the whole forward pass, parameters, and a per-module breakdown."""
    from lic.complexity import measure
    from lic.models import build

    config = {} if quality is None else {"quality": quality}
    result = measure(build(model, **config), size, width)
    if json_out:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.model} at {result.height}x{result.width}, counter: {result.counter}")
    for column in ("module", "kMAC/pixel", "share", "parameters"):
        table.add_column(column, justify="left" if column == "module" else "right")
    for name, value in sorted(result.modules.items(), key=lambda kv: -kv[1]):
        share = value / result.kmac_per_pixel if result.kmac_per_pixel else 0.0
        table.add_row(name, f"{value:.2f}", f"{share:.1%}", f"{result.module_parameters[name]:,}")
    table.add_row("total", f"{result.kmac_per_pixel:.2f}", "100%", f"{result.parameters:,}", style="bold")
    console = Console()
    console.print(table)
    if compare:
        reference = measure(build("cheng2020-anchor", quality=6), size, width)
        ratio = reference.kmac_per_pixel / result.kmac_per_pixel
        console.print(
            f"cheng2020-anchor quality 6, same counter: {reference.kmac_per_pixel:.1f} kMAC/pixel "
            f"({ratio:.2f}x {result.model}), {reference.parameters:,} parameters"
        )


@app.command()
def profile(
    name: Annotated[str, typer.Argument(help="sample (the embedded photographs) or full (the paper-scale recipe).")],
    params: Annotated[str, typer.Option("--params", help="The params file to change.")] = "params.yaml",
) -> None:
    """Switch params.yaml to a profile: its name and its rate points (`lambdas`, one train@<key> stage each)."""
    from lic.profiles import apply_profile

    values = apply_profile(name, Path(params))
    typer.echo(f"{params}: profile {name}, {len(values['lambdas'])} rate points: {', '.join(values['lambdas'])}")


@app.command()
def summary(
    params: Annotated[str, typer.Option("--params", help="The params file to read.")] = "params.yaml",
) -> None:
    """Print the pipeline's outcome: RD tables, plots, registered models, how to open MLflow and pull a model."""
    from lic.params import load_params
    from lic.summary import summary as pipeline_summary

    typer.echo(pipeline_summary(load_params(params)))


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except LicError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
