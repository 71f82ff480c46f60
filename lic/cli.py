"""The `lic` command line. Sub-commands import their heavy dependencies lazily so `lic --help` stays fast."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from lic.errors import LicError

app = typer.Typer(
    name="lic",
    help="LoC-LIC: low-complexity learned image coding, and the pipeline that trains and ships it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except LicError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
