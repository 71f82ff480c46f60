"""MLflow tracking of a training run: one MLflow run per Ray run (storage path and run name), logged from rank 0.

The driver finds or creates the MLflow run before Ray starts (`open_run`), so a restarted worker group and a
re-run of the same stage keep adding to the same MLflow run instead of leaving half-runs behind; rank 0 logs step
metrics, system information and the final checkpoint into it (`Tracker`). Plain MlflowClient calls, no global
"active run": Ray Train V2 has no Tune logger callbacks, and this is what Ray's guide recommends instead.

Lineage, recorded when the run is created: the source (entry point, git commit), the DVC version of the shard set
(tag `lic.data_version`) and the training data as an MLflow dataset (the shard index, whose digest is that DVC
hash), so the run page says what code and data made the model. The register stage later logs the codec model in
this run, so the run lists its model and registered version (lic/registry/register.py). The experiment is tagged
to open in MLflow's model-training view (MLflow 3 opens untagged experiments in its GenAI view).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import mlflow.data
import pandas as pd
import ray
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

from lic.registry.tracking import EXPERIMENT_KIND
from lic.train.settings import UNVERSIONED, RunSettings

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
SHARD_INDEX_FILES = ("index.parquet", "train.parquet")  # the shard set's row index: the contract's name, then today's


def open_run(settings: RunSettings) -> str:
    """The id of the MLflow run named after the training run, created (with its parameters and lineage) if new."""
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(settings.experiment)
    for key, value in EXPERIMENT_KIND.items():
        client.set_experiment_tag(experiment_id, key, value)
    same_run = f"attributes.run_name = '{settings.run_name}' and tags.`lic.storage` = '{settings.storage_path}'"
    found = client.search_runs([experiment_id], filter_string=same_run, max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=settings.run_name, tags=lineage_tags(settings))
    params = [Param(name, str(value)[:MAX_PARAM_LENGTH]) for name, value in settings.mlflow_params().items()]
    client.log_batch(run.info.run_id, params=params)
    if (dataset := training_dataset(settings)) is not None:
        context = InputTag(MLFLOW_DATASET_CONTEXT, "training")
        client.log_inputs(run.info.run_id, datasets=[DatasetInput(dataset, tags=[context])])
    return run.info.run_id


# What the train stage's steps.csv holds per logged step (DVC plots, template .dvc/plots/steps.json).
STEP_CURVES = ("loss", "bpp", "psnr", "lr", "samples_per_s", "val_loss", "val_bpp", "val_psnr")


def step_history(tracking_uri: str, run_id: str, names: tuple[str, ...] = STEP_CURVES) -> list[dict[str, float]]:
    """The run's logged metrics, one row per step (the last value where a restarted attempt logged a step again);
    a metric not logged at a step is missing from that row."""
    client = MlflowClient(tracking_uri)
    rows: dict[int, dict[str, float]] = {}
    for name in names:
        for metric in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp):
            rows.setdefault(metric.step, {"step": metric.step})[name] = metric.value
    return [rows[step] for step in sorted(rows)]


def lineage_tags(settings: RunSettings) -> dict[str, str]:
    """The run's own tags, the source MLflow's UI shows (entry point, git commit) and the data version."""
    root = Path(settings.root)
    entry = Path(sys.argv[0]).resolve()
    tags = {
        "lic.lambda_key": settings.key,
        "lic.storage": settings.storage_path,
        "lic.data_version": settings.data_version,
        MLFLOW_SOURCE_TYPE: "LOCAL",
        MLFLOW_SOURCE_NAME: str(entry.relative_to(root) if entry.is_relative_to(root) else entry.name),
    }
    if commit := get_git_commit(str(root)):
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def training_dataset(settings: RunSettings) -> Dataset | None:
    """The shard set as an MLflow dataset: its index (one row per stored image) for schema and size, and the DVC
    hash of the shard folder as digest, so two runs on the same data show the same digest; None without shards."""
    folder = Path(settings.root) / settings.shards.dir
    index = next((folder / name for name in SHARD_INDEX_FILES if (folder / name).is_file()), None)
    if index is None:
        return None
    digest = None if settings.data_version == UNVERSIONED else settings.data_version
    dataset = mlflow.data.from_pandas(pd.read_parquet(index), source=str(index), name="shards", digest=digest)
    return Dataset(**dataset.to_dict())


def mark_failed(settings: RunSettings, run_id: str) -> None:
    MlflowClient(settings.tracking_uri).set_terminated(run_id, "FAILED")


class Tracker:
    """Rank 0's handle on the run: metrics by step, system tags, the final checkpoint."""

    def __init__(self, settings: RunSettings, run_id: str, device: torch.device, nodes: list[str]) -> None:
        self.client = MlflowClient(settings.tracking_uri)
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in system_info(device, nodes).items()])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_checkpoint(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoint")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


def system_info(device: torch.device, nodes: list[str]) -> dict[str, Any]:
    """Where the run ran (rank 0's machine, and the Ray node of each rank): enough to tell whether two runs'
    speeds are comparable."""
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return {
        "sys.host": socket.gethostname(),
        "sys.platform": platform.platform(),
        "sys.python": platform.python_version(),
        "sys.torch": torch.__version__,
        "sys.ray": ray.__version__,
        "sys.device": f"{device.type}: {accelerator}",
        "sys.cpus": os.cpu_count(),
        "sys.torch_threads": torch.get_num_threads(),
        "sys.world_size": len(nodes),
        "sys.nodes": ",".join(nodes),
        "sys.backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else "none",
    }
