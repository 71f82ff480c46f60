"""CLI latency: how long `lic` takes to answer when it has nothing to code (help, version, info, bad arguments).

These paths must not import torch or CompressAI (seconds on a cold start); the section runs each command as a
fresh process, as a user does, and records its median wall time and whether torch got imported
(`python -X importtime` lists every module a process imports). The .lic file `lic info` reads is a valid
container around random streams: info reads and verifies the container, never the model.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Section, table
from lic.codec.container import Header, pack

REPEATS = 7
TARGET_S = 0.5  # issue 19: help, info and argument errors answer within this
HEAVY = ("torch", "compressai")


def _commands(folder: Path) -> dict[str, list[str]]:
    lic_file = folder / "photo.lic"
    streams = [os.urandom(9000), os.urandom(200)]
    header = Header("loclic", "0123abcd", 512, 768, "RGB", 64, tuple(len(s) for s in streams))
    lic_file.write_bytes(pack(header, streams))
    return {
        "lic --help": ["--help"],
        "lic --version": ["--version"],
        "lic compress -h": ["compress", "-h"],
        "lic info photo.lic": ["info", str(lic_file)],
        "lic compress (no arguments: usage error)": ["compress"],
        "lic compress missing.png -m model.pt": ["compress", str(folder / "missing.png"), "-m", "model.pt"],
        "lic decompress photo.lic (no model)": ["decompress", str(lic_file)],
    }


def _wall_seconds(argv: list[str]) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        code = subprocess.run(argv, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def _imports(args: list[str]) -> tuple[int, list[str]]:
    """(modules imported, the heavy ones among them) by one run of `lic args`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from lic.cli import main; main()", *args],
        capture_output=True,
        text=True,
    )
    modules = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    modules = [m for m in modules if m != "package"]  # the header line
    return len(modules), sorted(set(modules) & set(HEAVY))


def run() -> Section:
    lic = Path(sys.executable).with_name("lic")
    rows, data = [], {}
    with tempfile.TemporaryDirectory(prefix="lic-bench-") as folder:
        for label, args in _commands(Path(folder)).items():
            seconds, code = _wall_seconds([str(lic), *args])
            count, heavy = _imports(args)
            data[label] = {"median_s": round(seconds, 4), "exit_code": code, "modules": count, "heavy": heavy}
            rows.append([label, f"{seconds:.3f}", code, count, ", ".join(heavy) or "none"])
    baseline, _ = _wall_seconds([sys.executable, "-c", "import torch, compressai"])
    python, _ = _wall_seconds([sys.executable, "-c", "pass"])
    data["import torch, compressai"] = {"median_s": round(baseline, 4)}
    data["python -c pass"] = {"median_s": round(python, 4)}
    worst = max(v["median_s"] for k, v in data.items() if k.startswith("lic"))
    markdown = (
        f"Each command as a fresh process, median of {REPEATS} wall times; imports counted by one run under "
        "`python -X importtime`. For scale: the interpreter alone starts in "
        f"{python:.3f} s, and `import torch, compressai` takes {baseline:.2f} s.\n\n"
        + table(["command", "wall s", "exit code", "modules imported", "torch / compressai imported"], rows)
        + f"\n\nSlowest: {worst:.3f} s (target {TARGET_S} s: {'met' if worst < TARGET_S else 'missed'})."
    )
    return Section("CLI latency", markdown, data)
