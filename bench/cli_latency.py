"""CLI latency: how long `lic` takes to answer when it has nothing to code (help, version, info, bad arguments).

These paths must not import torch or CompressAI (seconds on a cold start); the section runs each command as a
fresh process, as a user does, and records its median wall time and whether torch got imported
(`python -X importtime` lists every module a process imports). The .lic file `lic info` reads is a valid
container around random streams: info reads and verifies the container, never the model.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Section, table
from lic.codec.container import Header, pack

REPEATS = 5
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


def _seconds(argv: list[str]) -> tuple[float, float, int]:
    """Median wall and CPU (user + system) seconds of a fresh process, and its exit code. CPU time does not grow
    when other work shares the machine; wall time does."""
    walls, cpus, code = [], [], 0
    for _ in range(REPEATS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        code = subprocess.run(argv, capture_output=True).returncode
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus), code


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
            wall, cpu, code = _seconds([str(lic), *args])
            count, heavy = _imports(args)
            data[label] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "exit_code": code, "modules": count}
            data[label]["heavy"] = heavy
            rows.append([label, f"{wall:.3f}", f"{cpu:.3f}", code, count, ", ".join(heavy) or "none"])
    for label, code in (("python -c pass", "pass"), ("import torch, compressai", "import torch, compressai")):
        wall, cpu, _ = _seconds([sys.executable, "-c", code])
        data[label] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
    worst = max(v["wall_s"] for k, v in data.items() if k.startswith("lic"))
    markdown = (
        f"Each command as a fresh process, medians of {REPEATS} runs (wall time, and CPU time, user + system, which "
        "other load on the machine does not inflate); imports counted by one run under `python -X importtime`. "
        f"For scale: the interpreter alone takes {data['python -c pass']['wall_s']:.3f} s wall, and "
        f"`import torch, compressai` {data['import torch, compressai']['wall_s']:.2f} s wall, "
        f"{data['import torch, compressai']['cpu_s']:.2f} s CPU.\n\n"
        + table(["command", "wall s", "CPU s", "exit code", "modules imported", "torch / compressai imported"], rows)
        + f"\n\nSlowest: {worst:.3f} s wall (target {TARGET_S} s: {'met' if worst < TARGET_S else 'missed'})."
    )
    return Section("CLI latency", markdown, data)
