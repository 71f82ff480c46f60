"""`lic stack`: the local stack (moto S3, mlflow server, a two-node Ray cluster) for one shell session."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="stack",
    help="Local servers for the pipeline: S3 (moto), an MLflow server, a Ray cluster. See infra/README.md.",
    no_args_is_help=True,
)
DirOption = Annotated[Path, typer.Option("--dir", help="Where env.sh and run/ (state, logs, data) live.")]
DEFAULT_DIR = Path("infra/local")


@app.command()
def up(
    directory: DirOption = DEFAULT_DIR,
    s3_port: Annotated[int, typer.Option(help="Port of the S3 API (moto).")] = 9000,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow server.")] = 5000,
    ray_port: Annotated[int, typer.Option(help="Port of the Ray head (GCS).")] = 6379,
    worker_nodes: Annotated[int, typer.Option(help="Ray nodes besides the head.")] = 1,
    cpus_per_node: Annotated[int, typer.Option(help="CPUs each Ray node offers.")] = 1,
) -> None:
    """Start the stack (nothing to do when it runs) and write env.sh for `source`."""
    from lic.stack.local import Ports, Stack

    stack = Stack(directory)
    stack.up(Ports(s3=s3_port, mlflow=mlflow_port, ray=ray_port), worker_nodes, cpus_per_node)
    _print_status(stack)
    typer.echo(f"Use it from a shell: source {stack.env_file}")


@app.command()
def down(directory: DirOption = DEFAULT_DIR) -> None:
    """Stop every server the stack started, by PID, and remove env.sh (nothing to do when none runs)."""
    from lic.stack.local import Stack

    stopped = Stack(directory).down()
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "the local stack is not running")


@app.command()
def status(directory: DirOption = DEFAULT_DIR) -> None:
    """Show each server of the stack; exit code 1 unless all of them run."""
    from lic.stack.local import Stack

    if not _print_status(Stack(directory)):
        raise typer.Exit(1)


def _print_status(stack) -> bool:
    services = stack.status()
    if not services:
        typer.echo("the local stack is not running")
        return False
    for service, running in services:
        port = f"port {service.port}" if service.port else ""
        typer.echo(f"{'up  ' if running else 'DOWN'} {service.name:<18} pid {service.pid:<8} {port:<10} {service.log}")
    return all(running for _, running in services)
