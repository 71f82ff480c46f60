"""`lic compress`, `lic decompress`, `lic info`: the codec for image files.

Inputs may be files, folders (their images, or their .lic files, not recursive) and glob patterns, or `-` for
standard input (then the output goes to standard output unless -o names a file; `-o -` writes there too). Every
output file is written to a temporary file and renamed, so an interrupted run never leaves half a file; existing
outputs are only replaced with --force. A file that fails is reported and skipped, and the command exits with
code 3 at the end (1 when nothing was done, 2 for options that do not fit the inputs). Progress goes to stderr,
the summary table to stdout (stderr when stdout carries the data). Torch and the models are imported only when
a command codes, so `lic --help`, `lic info` and argument errors stay fast.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lic.codec.container import DECODE_BUDGET_PIXELS, MAX_PIXELS
from lic.errors import LicError, PartialFailureError, UsageError

LIC_SUFFIX = ".lic"
DECODED_SUFFIX = ".png"
MODEL_ENV = "LIC_MODEL"
STDIO = Path("-")  # as an input: standard input; as an output: standard output

ModelOption = typer.Option(
    "--model",
    "-m",
    envvar=MODEL_ENV,
    metavar="MODEL",
    help="Checkpoint file, a folder holding model.pt (lic pull), or models:/NAME@ALIAS | models:/NAME/VERSION.",
)
OutputOption = typer.Option(
    "--output", "-o", metavar="FILE", help="Output file (only with a single input); - for standard output."
)
OutDirOption = typer.Option(
    "--out-dir", metavar="FOLDER", help="Write outputs into this folder (default: beside each input)."
)
LicInputs = Annotated[
    list[str],
    typer.Argument(metavar="LIC", help=".lic files, folders, glob patterns, or - (stdin).", show_default=False),
]
ForceOption = typer.Option("--force", "-f", help="Replace outputs that already exist.")
MaxPixelsOption = typer.Option(
    "--max-pixels",
    min=1,
    help="Refuse files declaring more pixels than this: decoding time and memory follow the declared size, so "
    f"the default (4096 x 2048) suits untrusted files; the format allows up to {MAX_PIXELS:,}.",
)
JobsOption = typer.Option(
    "--jobs",
    "-j",
    min=1,
    help="Cores to use (default: all available): files coded at once in worker processes; a single file uses two "
    "for its convolutions. The bytes do not depend on it.",
)


def compress(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="IMAGE", help="Image files, folders, glob patterns, or - (stdin).", show_default=False),
    ],
    model: Annotated[str, ModelOption],
    output: Annotated[Path | None, OutputOption] = None,
    out_dir: Annotated[Path | None, OutDirOption] = None,
    force: Annotated[bool, ForceOption] = False,
    jobs: Annotated[int | None, JobsOption] = None,
) -> None:
    """Compress images (PNG, JPEG, WebP, TIFF, PPM) into .lic files."""
    from lic.data.names import IMAGE_SUFFIXES  # a folder contributes these; a file named may be any format

    sources = expand_inputs(inputs, IMAGE_SUFFIXES)
    plan = plan_outputs(sources, LIC_SUFFIX, output, out_dir, force)
    from lic.codec import bits_per_pixel, encode, open_image  # torch: only once the arguments are known good
    from lic.codec.resolve import resolve_model

    net = resolve_model(model)

    def one(source: Path, target: Path) -> tuple[int, float]:
        image = open_image(_read(source) if source == STDIO else source)
        data = encode(image, net)
        _write(target, lambda tmp: tmp.write_bytes(data))
        return len(data), bits_per_pixel(len(data), image.height, image.width)

    _run("compressing", plan, one, jobs)


def decompress(
    inputs: LicInputs,
    model: Annotated[str | None, ModelOption] = None,
    output: Annotated[Path | None, OutputOption] = None,
    out_dir: Annotated[Path | None, OutDirOption] = None,
    force: Annotated[bool, ForceOption] = False,
    max_pixels: Annotated[int, MaxPixelsOption] = DECODE_BUDGET_PIXELS,
    jobs: Annotated[int | None, JobsOption] = None,
) -> None:
    """Decompress .lic files into images (PNG unless -o names another format; PNG on standard output)."""
    from PIL import Image

    from lic.codec.container import read_header

    sources = expand_inputs(inputs, (LIC_SUFFIX,))
    if model is None:
        header = read_header(_read(sources[0]))
        raise UsageError(
            f"{_name(sources[0])} was encoded by model {header.model} (fingerprint {header.fingerprint}): "
            f"name it with --model or ${MODEL_ENV}"
        )
    plan = plan_outputs(sources, DECODED_SUFFIX, output, out_dir, force)
    formats = {**Image.registered_extensions(), "": "PNG"}  # "": standard output
    for _, target in plan:
        if target.suffix.lower() not in formats:
            raise UsageError(f"{target}: unknown image format {target.suffix!r}; use .png, .tif, .ppm, ...")
    from lic.codec import bits_per_pixel, decode  # torch: only once the arguments are known good
    from lic.codec.resolve import resolve_model

    net = resolve_model(model)

    def one(source: Path, target: Path) -> tuple[int, float]:
        data = _read(source)
        image = decode(data, net, max_pixels)
        _write(target, lambda tmp: image.save(tmp, format=formats[target.suffix.lower()]))
        return len(data), bits_per_pixel(len(data), image.height, image.width)

    _run("decompressing", plan, one, jobs)


def info(
    inputs: LicInputs,
    json_out: Annotated[bool, typer.Option("--json", help="Print the headers as JSON.")] = False,
) -> None:
    """Print what a .lic file says about itself: model, image size, colour mode, bytes, bpp."""
    from lic.codec.container import unpack  # the container alone: no torch, so this answers at once

    rows, failures = [], []
    for source in expand_inputs(inputs, (LIC_SUFFIX,)):
        try:
            data = _read(source)
            header, _ = unpack(data)  # verifies lengths and checksum too
        except LicError as err:
            failures.append(_about(source, err))
            continue
        rows.append(
            {
                "file": str(source),
                "model": header.model,
                "fingerprint": header.fingerprint,
                "height": header.height,
                "width": header.width,
                "mode": header.mode,
                "bytes": len(data),
                "header_bytes": header.header_bytes,
                "bpp": header.bpp,  # the whole file: unpack checked that it is header and streams
            }
        )
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            typer.echo(
                f"{row['file']}: model {row['model']} (fingerprint {row['fingerprint']}), "
                f"{row['width']}x{row['height']} {row['mode']}, {row['bytes']} bytes "
                f"(header {row['header_bytes']}), {row['bpp']:.4f} bpp"
            )
    _report_failures(failures, len(rows) + len(failures))


# --- inputs and outputs --------------------------------------------------------------------------------------


def expand_inputs(inputs: Iterable[str], suffixes: Collection[str]) -> list[Path]:
    """Files named, the files with `suffixes` in folders named (sorted), and the files glob patterns match.

    `-` stands for standard input and must then be the only input.
    """
    inputs = list(inputs)
    if "-" in inputs:
        if len(inputs) > 1:
            raise UsageError("- (standard input) must be the only input")
        return [STDIO]
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not matches:
                raise LicError(f"{item}: folder holds no {'/'.join(sorted(suffixes))} files")
        elif path.exists() or path.is_symlink():
            if not path.is_file():
                raise LicError(f"{item}: not a regular file")
            matches = [path]
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True) if Path(p).is_file())
            if not matches:
                raise LicError(f"{item}: pattern matches no files")
        else:
            raise LicError(f"{item}: no such file or folder")
        found.update(dict.fromkeys(matches))
    return list(found)


def plan_outputs(
    sources: list[Path], suffix: str, output: Path | None, out_dir: Path | None, force: bool
) -> list[tuple[Path, Path]]:
    """(source, target) pairs, checked before any work: one target each, writable folders, nothing clobbered.

    Standard input goes to standard output unless -o names a file; `-o -` sends a single output there.
    """
    if output is not None and out_dir is not None:
        raise UsageError("give either -o/--output or --out-dir, not both")
    if output is not None:
        if len(sources) != 1:
            raise UsageError(f"-o/--output names one file but there are {len(sources)} inputs: use --out-dir")
        targets = [output]
    elif sources == [STDIO]:
        if out_dir is not None:
            raise UsageError("standard input has no file name for --out-dir: use -o FILE, or neither for stdout")
        targets = [STDIO]
    else:
        targets = [(out_dir or source.parent) / (source.stem + suffix) for source in sources]
    seen: dict[Path, Path] = {}
    for source, target in zip(sources, targets, strict=True):
        if target == STDIO:
            continue
        if target.resolve() in seen:
            raise UsageError(f"{seen[target.resolve()]} and {source} would both be written to {target}")
        seen[target.resolve()] = source
        if source != STDIO and target.resolve() == source.resolve():
            raise UsageError(f"{source}: the output would replace the input")
        if target.exists() and not force:
            raise LicError(f"{target} exists (use --force to replace it)")
    for folder in sorted({target.parent for target in targets if target != STDIO}):
        _check_writable(folder)
    return list(zip(sources, targets, strict=True))


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LicError(f"cannot create output folder {folder} ({err.strerror or err})") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LicError(f"cannot write to output folder {folder} (permission denied)")


def _read(path: Path) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as err:
        raise LicError(f"{path}: cannot read ({err.strerror or err})") from err


def _write(target: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file beside the target, renamed into place only when complete.

    Standard output gets the finished file in one write, so a failure never leaves half an image in a pipe.
    """
    from lic.io.atomic import atomic_path

    if target == STDIO:
        with tempfile.TemporaryDirectory(prefix="lic-") as folder:
            tmp = Path(folder) / "output"
            write(tmp)
            sys.stdout.buffer.write(tmp.read_bytes())
            sys.stdout.buffer.flush()
        return
    try:
        with atomic_path(target) as tmp:
            write(tmp)
    except OSError as err:
        raise LicError(f"cannot write {target} ({err.strerror or err})") from err


# --- the batch loop ------------------------------------------------------------------------------------------


@dataclass
class _Totals:
    files: int = 0
    bytes: int = 0
    bpp_sum: float = 0.0


@dataclass(frozen=True)
class _Outcome:
    """What coding one file gave: its size and rate, or the error; the image warnings it raised on the way."""

    size: int = 0
    bpp: float = 0.0
    error: str | None = None
    warnings: tuple[str, ...] = ()


Work = Callable[[Path, Path], tuple[int, float]]
_worker_work: Work | None = None  # what a forked worker process runs: inherited from the parent, never pickled


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _attempt(one: Work, source: Path, target: Path) -> _Outcome:
    from lic.codec.images import ImageWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        try:
            size, bpp = one(source, target)
            error = None
        except LicError as err:
            size, bpp, error = 0, 0.0, _about(source, err)
    return _Outcome(size, bpp, error, tuple(str(w.message) for w in caught if issubclass(w.category, ImageWarning)))


def _one_core() -> None:
    """Its siblings use the other cores: one torch thread, and each convolution's halves one after the other.

    One thread is also what makes a forked worker safe: the parent's OpenMP thread pool (created by any torch
    operation it ran on several threads, e.g. loading the model) does not survive fork, and a child that enters
    a parallel region on it waits forever (measured: `lic compress -j 2` on 768x512 photos hung in to_tensor).
    Coding itself runs on lic.codec.determinism's pinned thread count either way, so the bytes do not change.
    """
    import torch

    from lic.models.halves import run_halves_concurrently

    torch.set_num_threads(1)
    run_halves_concurrently(False)


def _in_worker(job: tuple[Path, Path]) -> tuple[Path, _Outcome]:
    assert _worker_work is not None
    return job[0], _attempt(_worker_work, *job)


def _outcomes(jobs: list[tuple[Path, Path]], one: Work, workers: int) -> Iterator[tuple[Path, _Outcome]]:
    """(source, outcome) of every job as it finishes: here, or in `workers` processes forked from this one.

    Forked workers inherit the loaded model (nothing is pickled or loaded again) and code on the thread count
    that `lic.codec.determinism` pins, as this process would, so the bytes do not depend on --jobs. Where fork
    is not available (macOS, Windows) the files are coded here, one after another.
    """
    global _worker_work
    if workers <= 1:
        _one_core()  # one core
    if workers <= 1 or len(jobs) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for source, target in jobs:
            yield source, _attempt(one, source, target)
        return
    _worker_work = one
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _one_core) as pool:
            yield from pool.imap_unordered(_in_worker, jobs)
    finally:
        _worker_work = None


def _run(verb: str, jobs: list[tuple[Path, Path]], one: Work, workers: int | None = None) -> None:
    """Apply `one` to every (source, target), with a progress bar, per-file errors and a summary table."""
    from lic.io.progress import counting, say

    totals, failures, start = _Totals(), [], time.perf_counter()
    progress = counting()
    progress.live.transient = True  # the bar goes away when done: what stays is the summary and any errors
    with progress:
        task = progress.add_task(verb, total=len(jobs))
        for source, outcome in _outcomes(jobs, one, available_cores() if workers is None else workers):
            progress.update(task, description=f"{verb} {source.name}")
            if outcome.error is not None:
                failures.append(outcome.error)
            else:
                totals.files += 1
                totals.bytes += outcome.size
                totals.bpp_sum += outcome.bpp
            for message in outcome.warnings:
                say(f"warning: {message}")
            progress.advance(task)
    if totals.files:
        _print_summary(totals, time.perf_counter() - start, to_stderr=any(t == STDIO for _, t in jobs))
    _report_failures(failures, len(jobs))


def _name(source: Path) -> str:
    return "standard input" if source == STDIO else str(source)


def _about(source: Path, err: LicError) -> str:
    """The error line of one input, naming it once (errors from opening a file already start with its path)."""
    name, message = _name(source), str(err)
    return message if message.startswith(f"{name}:") else f"{name}: {message}"


def _report_failures(failures: list[str], total: int) -> None:
    """One error line per failed file; the command then fails with a count (or that one error, if alone).

    Exit code 3 (PartialFailureError) when some files were done, 1 when none was.
    """
    if not failures:
        return
    if total == 1:
        raise LicError(failures[0])
    from lic.io.progress import say  # rich: only when there is something to report

    for failure in failures:
        say(f"error: {failure}")
    error = LicError if len(failures) == total else PartialFailureError
    raise error(f"{len(failures)} of {total} files failed")


def _print_summary(totals: _Totals, seconds: float, to_stderr: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("files", "coded bytes", "mean bpp", "time"):
        table.add_column(column, justify="right")
    table.add_row(str(totals.files), f"{totals.bytes:,}", f"{totals.bpp_sum / totals.files:.4f}", f"{seconds:.1f} s")
    Console(stderr=to_stderr).print(table)
