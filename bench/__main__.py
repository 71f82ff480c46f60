"""`make bench`: run every benchmark section and write docs/benchmarks.md and docs/benchmarks.json.

Each section is a function returning a `bench.common.Section`; add new ones to SECTIONS. The whole run is meant
to finish in under 15 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench import cli_latency, codec_speed, complexity, jobs, loader, staging, training
from bench.common import machine

SECTIONS = [complexity.run, codec_speed.run, jobs.run, loader.run, staging.run, training.run, cli_latency.run]
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


SCALE_HEADING = "\n## Data stages at scale"  # recorded from `make bench-scale` runs (hours), not rerun by `make bench`


def _kept_scale_section(path: Path) -> str:
    """The data-stages-at-scale section of the current file, carried over unchanged."""
    text = path.read_text() if path.exists() else ""
    return text[text.index(SCALE_HEADING) :] if SCALE_HEADING in text else ""


def _previous_sections(path: Path) -> list[tuple[str, str]]:
    """(title, text) of each section the current file has before the scale section, in order."""
    text = path.read_text() if path.exists() else ""
    text = text[: text.index(SCALE_HEADING)] if SCALE_HEADING in text else text
    return [(block.split("\n", 1)[0], "\n## " + block.rstrip("\n") + "\n") for block in text.split("\n## ")[1:]]


def main() -> None:
    names = {run.__module__.rsplit(".", 1)[-1]: run for run in SECTIONS}
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=names, metavar="SECTION",
        help=f"rerun these sections only ({', '.join(names)}); the others stay as the last run wrote them",
    )  # fmt: skip
    args = parser.parse_args()
    host = machine()
    started = time.perf_counter()
    sections = []
    for name, run in names.items():
        if not args.only or name in args.only:
            print(f"running {run.__module__} ...", flush=True)
            sections.append(run())
    elapsed = time.perf_counter() - started
    cpu = f"{host['cpu']} ({host['cpu_capability']})"
    where = f"*{cpu}, {host['cores']} cores, {host['torch_threads']} torch threads, {host['date']}.*"
    fresh = {s.title: f"\n## {s.title}\n\n{where}\n\n{s.markdown}\n" for s in sections}
    ran = f"run on {host['date']} in {elapsed / 60:.1f} minutes"
    json_path, previous = DOCS / "benchmarks.json", {}
    if args.only:
        kept = _previous_sections(DOCS / "benchmarks.md")
        fresh = {title: fresh.get(title, text) for title, text in kept} | fresh  # the file's order, new ones last
        ran = f"sections {', '.join(s.title for s in sections)} rerun on {host['date']} (--only), the others earlier"
        previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    header = (
        "# Benchmarks\n\nWritten by `make bench` (code in `bench/`). "
        f"Machine: {cpu}, {host['cores']} cores, torch {host['torch']} with {host['torch_threads']} threads, "
        f"Python {host['python']}; {ran}.\n"
    )
    DOCS.mkdir(exist_ok=True)
    _write(DOCS / "benchmarks.md", header + "\n".join(fresh.values()) + _kept_scale_section(DOCS / "benchmarks.md"))
    data = previous | {"machine": host, **{s.title: s.data for s in sections}}
    _write(json_path, json.dumps(data, indent=2))
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
