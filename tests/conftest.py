"""Shared fixtures. Tests run offline; servers they need are started on 127.0.0.1 by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a test module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`).

    Tiny models code faster on one thread, and many times faster when other processes share the two cores
    (two OpenMP threads then spin against each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
