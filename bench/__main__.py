"""`make bench`: run every benchmark section and write docs/benchmarks.md and docs/benchmarks.json.

Each section is a function returning a `bench.common.Section`; add new ones to SECTIONS. The whole run is meant
to finish in under 15 minutes on a 2-core machine.
"""

from __future__ import annotations

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


def main() -> None:
    host = machine()
    started = time.perf_counter()
    sections = []
    for run in SECTIONS:
        print(f"running {run.__module__} ...", flush=True)
        sections.append(run())
    elapsed = time.perf_counter() - started
    header = (
        "# Benchmarks\n\nWritten by `make bench` (code in `bench/`). "
        f"Machine: {host['cpu']}, {host['cores']} cores, torch {host['torch']} with {host['torch_threads']} threads, "
        f"Python {host['python']}; run on {host['date']} in {elapsed / 60:.1f} minutes.\n"
    )
    where = f"*{host['cpu']}, {host['cores']} cores, {host['torch_threads']} torch threads, {host['date']}.*"
    body = "\n".join(f"\n## {s.title}\n\n{where}\n\n{s.markdown}\n" for s in sections)
    DOCS.mkdir(exist_ok=True)
    _write(DOCS / "benchmarks.md", header + body + _kept_scale_section(DOCS / "benchmarks.md"))
    _write(DOCS / "benchmarks.json", json.dumps({"machine": host, **{s.title: s.data for s in sections}}, indent=2))
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
