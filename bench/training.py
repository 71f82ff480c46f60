"""Training throughput with Ray Train on this machine: samples/s for 1 and 2 workers, and a step's time split.

The real LoC-LIC of params.yaml (train.model) trains on 256x256 crops only (the loader's batch size for them, per
worker) of the sample profile's shards, which the pipeline's own stage functions build in a temporary folder.
Each configuration is one `lic.train.driver.train` run on a local Ray (one CPU and one thread per worker) with a
throwaway MLflow store; its numbers are the run's own means over its steps after the first (which pays for
FFCV's JIT compilation), as rank 0 measured them. A step's split: waiting for the batch (data), forward pass and
RD loss, backward pass (with DDP's gradient all-reduce), clipping and both optimiser steps.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Section, table
from lic.data.dedupe import run_dedupe
from lic.data.fetch import fetch_source
from lic.data.manifest import build_manifest
from lic.data.shards import build_shards
from lic.params import Params, load_params
from lic.train.driver import train

ROOT = Path(__file__).resolve().parents[1]
WORKERS = (1, 2)
STEPS = 6
PHASES = ("data", "forward", "backward", "optimizer")
HEADER = ["workers", "batch / step", "samples/s", "step s", *(f"{phase} s" for phase in PHASES)]


@contextmanager
def _scratch_project(folder: Path) -> Iterator[None]:
    """Work inside `folder` with a local Ray and an MLflow store of its own, whatever the caller's environment."""
    saved_cwd, saved_env = Path.cwd(), dict(os.environ)
    os.chdir(folder)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _sample_shards(params: Params) -> None:
    """fetch, manifest, dedupe and shard of the sample profile, as the DVC stages run them."""
    for source in params.active_sources:
        fetch_source(params, source)
        build_manifest(params, source)
    run_dedupe(params)
    build_shards(params)


def run() -> Section:
    overrides = {
        "profile": "sample",
        "loader.crop_mix": {256: 1.0},
        "train.steps": {"sample": STEPS},
        **{f"train.{every}": STEPS for every in ("log_every", "val_every", "checkpoint_every")},
        "train.ray.address": None,
        "train.ray.cpus_per_worker": 1,
    }
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder, _scratch_project(Path(folder)):
        params = load_params(ROOT / "params.yaml", overrides, env={})
        _sample_shards(params)
        for workers in WORKERS:
            params = load_params(ROOT / "params.yaml", {**overrides, "train.ray.num_workers": workers}, env={})
            out_dir = train(params, key=f"bench-{workers}-workers", lmbda=0.013)
            results[workers] = json.loads((out_dir / "metrics.json").read_text())
    batch = params.loader.batch_size[256]
    rows = []
    for workers, metrics in results.items():
        split = [metrics[f"mean_time_{phase}_s"] for phase in PHASES]
        rows.append(
            [workers, batch * workers, f"{metrics['mean_samples_per_s']:.2f}", f"{sum(split):.2f}",
             *(f"{seconds:.2f}" for seconds in split)]
        )  # fmt: skip
    model = params.train.model
    markdown = (
        f"{model.name} {model.config}, 256x256 crops, batch {batch} per worker, {STEPS} steps per run "
        f"(means over the last {STEPS - 1}); Ray Train DDP (gloo), one CPU per worker.\n\n" + table(HEADER, rows)
    )
    return Section("Training throughput (Ray Train, CPU)", markdown, {"steps": STEPS, "runs": results})
