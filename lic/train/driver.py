"""The driver of one training run: connect to Ray, run the TorchTrainer, write the stage's outputs.

Ray: `RAY_ADDRESS` (or train.ray.address) attaches to a running cluster; otherwise a small local Ray is started
for the run and stopped after it. Resuming is Ray Train V2's: the same `RunConfig(storage_path, name)` finds
the run's checkpoints, and the workers continue from the latest (Ray has no resume flag any more). A crashed
worker group is restarted up to `max_failures` times from the latest checkpoint. Outputs (in `out_dir`): the
final lic checkpoint `model.pt` and the final metrics `metrics.json` (DVC metrics), both written atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.fs
import ray
from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer

from lic.checkpoint import CHECKPOINT_FILE
from lic.errors import LicError
from lic.io.atomic import atomic_path, write_text
from lic.params import Params
from lic.train.loop import train_worker
from lic.train.settings import RunSettings, resolve
from lic.train.tracking import STEP_CURVES, mark_failed, open_run, step_history

METRICS_OUTPUT, STEPS_OUTPUT = "metrics.json", "steps.csv"


def train(params: Params, key: str | None = None, lmbda: float | None = None, metric: str | None = None) -> Path:
    """Train (or resume) the model of one lambda; returns the folder holding model.pt and metrics.json."""
    settings = resolve(params, key, lmbda, metric)
    run_id = open_run(settings)
    cluster = settings.cluster
    started_here = _connect(settings)
    try:
        use_gpu = cluster.use_gpu
        if use_gpu == "auto":
            use_gpu = ray.cluster_resources().get("GPU", 0) >= cluster.num_workers
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"settings": settings, "mlflow_run_id": run_id},
            scaling_config=ScalingConfig(
                num_workers=cluster.num_workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cluster.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            ),
            run_config=RunConfig(
                name=settings.run_name,
                storage_path=settings.storage_path,
                checkpoint_config=CheckpointConfig(
                    num_to_keep=cluster.keep_best, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
                ),
                failure_config=FailureConfig(max_failures=cluster.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as err:
            mark_failed(settings, run_id)
            raise LicError(f"training run {settings.run_name} failed: {err}") from err
        return _export(result, settings, run_id)
    finally:
        if started_here:
            ray.shutdown()


def _connect(settings: RunSettings) -> bool:
    """Attach to the cluster named by train.ray.address (RAY_ADDRESS overrides it: lic.params), else start a local
    Ray just big enough for the run; returns whether a local Ray was started (and so is to be stopped)."""
    if ray.is_initialized():
        return False
    address = settings.cluster.address
    runtime_env = {"worker_process_setup_hook": f"{__name__}.{quiet_ray_logs.__name__}"}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        return False
    cluster = settings.cluster
    ray.init(num_cpus=cluster.num_workers * cluster.cpus_per_worker, include_dashboard=False, runtime_env=runtime_env)
    return True


def quiet_ray_logs() -> None:
    """Run by Ray in each worker process of the job. Ray Train's placement-group cleaner asks the State API
    whether the controller is alive every second, and without Ray's dashboard (not installed: ray[train] does
    not bring it) logs a warning each time it cannot; this keeps the terminal for training's own lines."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _export(result: Result, settings: RunSettings, run_id: str) -> Path:
    """Copy the latest checkpoint's model.pt and write the final metrics and the per-step curves next to it."""
    if result.checkpoint is None:
        raise LicError(f"training run {settings.run_name} ended without a checkpoint")
    out_dir = Path(settings.out_dir)
    checkpoint = result.checkpoint
    with atomic_path(out_dir / CHECKPOINT_FILE) as tmp:  # model.pt alone: as_directory() would fetch state.pt too
        pyarrow.fs.copy_files(f"{checkpoint.path}/{CHECKPOINT_FILE}", str(tmp), source_filesystem=checkpoint.filesystem)
    metrics = {name: value for name, value in result.metrics.items() if isinstance(value, int | float)}
    write_text(out_dir / METRICS_OUTPUT, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_text(out_dir / STEPS_OUTPUT, steps_csv(step_history(settings.tracking_uri, run_id)))
    return out_dir


def steps_csv(rows: list[dict[str, float]]) -> str:
    """Rows of step_history as CSV, a column per curve (empty where a step did not log it)."""
    lines = [",".join(["step", *STEP_CURVES])]
    for row in rows:
        values = ("" if row.get(name) is None else f"{row[name]:.6g}" for name in STEP_CURVES)
        lines.append(",".join([str(int(row["step"])), *values]))
    return "\n".join(lines) + "\n"
