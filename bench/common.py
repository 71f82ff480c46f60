"""What every benchmark section shares: the machine description, the section type, robust timing."""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Section:
    """One part of docs/benchmarks.md: a title, its markdown body and the raw numbers for the JSON file."""

    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


def cpuinfo(key: str) -> str | None:
    """The first value of `key` in Linux's /proc/cpuinfo ("model name", "vendor_id"); None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return None


def machine() -> dict[str, Any]:
    import os

    return {
        "cpu": cpuinfo("model name") or platform.processor() or "unknown CPU",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # machines of one model name differ: AVX2, AVX512
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def timings(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> list[float]:
    """Wall times of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """The typical time of a call."""
    return statistics.median(timings(fn, repeats, warmup))


def best_seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    """The fastest call: the estimate of what the hardware can do."""
    return min(timings(fn, repeats))


def peak_rss_mib() -> float:
    """Peak resident memory of this process image so far: VmHWM, which (unlike ru_maxrss) restarts at exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
