"""The `lic` command line. Sub-commands import their heavy dependencies lazily, so `lic --help`, `lic info` and
argument errors answer without importing torch (bench/cli_latency.py measures it).

Exit codes (README, "Exit codes"): 0 done, 1 the command failed, 2 usage error, 3 a batch partly failed.
"""

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


def _readable_type(
    self: typer.core.TyperOption | typer.core.TyperArgument, ctx: typer.core._click.Context
) -> str | None:
    """The value label help shows beside a parameter: typer >= 0.2x prints Python types there (<list[str]> for a
    list argument, <bool> for a flag). An argument's name (IMAGE, checkpoint) says what it is and a flag takes no
    value, so neither gets one; an option shows its metavar, else typer's label (<path>, <int>)."""
    if isinstance(self, typer.core.TyperArgument) or getattr(self, "is_flag", False):
        return None
    return self.metavar or self.display_type(ctx)


typer.core.TyperArgument.display_type_rich = _readable_type
typer.core.TyperOption.display_type_rich = _readable_type

app = typer.Typer(
    name="lic",
    help="LoC-LIC: low-complexity learned image coding, and the pipeline that trains and ships it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # sub-commands inherit it
    rich_markup_mode=None,  # plain help and usage errors: typer's rich renderer alone imports for 0.3 s
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


def _print_version(value: bool) -> None:
    if value:
        from lic import __version__

        typer.echo(f"lic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """LoC-LIC command line."""


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


@app.command("import")
def import_weights(
    file: Annotated[Path, typer.Argument(help="An official training checkpoint, e.g. checkpoint_best_loss.pth.tar.")],
    source: Annotated[str, typer.Option("--from", help="Its code: loclic-official or mlicpp-official (2024).")],
    lmbda: Annotated[float | None, typer.Option("--lmbda", help="The lambda it was trained with.")] = None,
    metric: Annotated[str | None, typer.Option(help="The distortion it was trained for: mse or ms-ssim.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write it (default: <model>-<metric>-<lambda>.pt).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace the output if it exists.")] = False,
    register: Annotated[
        bool,
        typer.Option(help="Then evaluate it and register <model>-<metric>-<lambda> in MLflow (promotion gate)."),
    ] = False,
    params: Annotated[Path, typer.Option("--params", help="The params file (for --register).")] = Path("params.yaml"),
) -> None:
    """Import official LoC-LIC or MLIC++ weights as a lic checkpoint (docs/model.md, "Official weights")."""
    from lic.models.official import SOURCES, import_checkpoint
    from lic.registry.naming import registered_name

    if source not in SOURCES:
        raise LicError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    if register and (lmbda is None or metric is None):
        raise LicError("--register names the model by its rate point: give --lmbda and --metric")
    if output is None:
        named = lmbda is not None and metric is not None
        output = Path(
            f"{registered_name(SOURCES[source], metric, lmbda) if named else SOURCES[source] + '-imported'}.pt"
        )
    if output.exists() and not force:
        raise LicError(f"{output} exists (use --force to replace it)")
    checkpoint = import_checkpoint(file, source, output, lmbda=lmbda, metric=metric)
    typer.echo(f"wrote {checkpoint}")
    if register:  # the normal path: `lic evaluate`, then `lic register` with its promotion gate
        from lic.eval.evaluate import evaluate_checkpoint
        from lic.params import load_params

        settings = load_params(params)
        eval_dir = Path(settings["evaluate"]["out_dir"]) / checkpoint.stem
        evaluate_checkpoint(checkpoint, Path(settings["data"]["paths"]["eval"]), eval_dir)
        registry_cli.register(checkpoint, eval_dir, params=params)


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
    """Console entry point: user errors become one line on stderr and their exit code, never a traceback."""
    try:
        app()
    except LicError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
