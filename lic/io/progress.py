"""Progress bars and messages of the data stages, on stderr so DVC logs and pipes keep stdout for results."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)


def say(message: str) -> None:
    """One status line of a stage."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def counting() -> Progress:
    """A bar for items (images): done/total, elapsed and remaining time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def transferring() -> Progress:
    """A bar for bytes (downloads): size done, speed and remaining time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
