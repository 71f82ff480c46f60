"""One training run's settings, resolved once on the driver from params.yaml and a lambda.

Workers receive this object as it is, so everything relative is made absolute here: Ray starts workers in a
session directory of its own, possibly on another machine. The run name is the lambda key plus a fingerprint of
everything that shapes the trained weights except the step budget, so re-running the same settings resumes the
same run, raising `steps` continues it, and changing the lambda (or the data, model, optimiser) starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lic.errors import LicError
from lic.params import METRICS, Loader, Params, RayCluster, Shards
from lic.registry.tracking import tracking_uri
from lic.train.schedule import mix_start_step, scaled_lr, warmup_steps

UNVERSIONED = "unversioned"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Optimisation:
    """The optimiser and its schedule (lic.train.schedule)."""

    steps: int
    lr: float
    aux_lr: float
    warmup_steps: int
    min_lr: float
    clip_norm: float
    amp: bool  # bfloat16 autocast on GPU; ignored on CPU


@dataclass(frozen=True)
class RunSettings:
    key: str
    lmbda: float
    metric: str
    model: str
    model_config: dict[str, Any]
    optimisation: Optimisation
    cluster: RayCluster  # Ray's ScalingConfig, FailureConfig and CheckpointConfig come from here
    seed: int
    log_every: int
    val_every: int
    checkpoint_every: int
    loader: Loader
    shards: Shards
    root: str  # the project root; workers work from here so the paths in params resolve
    data_version: str
    run_name: str
    storage_path: str  # absolute local folder or s3://bucket/prefix?endpoint_override=...
    tracking_uri: str
    experiment: str
    out_dir: str  # outputs/train/<key>: model.pt and metrics.json
    mix_from_step: int  # the first step drawn from the crop mix (lic.train.schedule)

    def mlflow_params(self) -> dict[str, Any]:
        """What MLflow records as the run's parameters: the settings that shape the model, flattened."""
        shaping = {
            "key": self.key,
            "lmbda": self.lmbda,
            "metric": self.metric,
            "model": self.model,
            "model_config": self.model_config,
            "optimisation": asdict(self.optimisation),
            "seed": self.seed,
            "world_size": self.cluster.num_workers,
            "loader": self.loader.model_dump(),
            "data_version": self.data_version,
            "run_name": self.run_name,
        }
        return _flatten(shaping)


def resolve(
    params: Params,
    key: str | None = None,
    lmbda: float | None = None,
    metric: str | None = None,
    root: Path | None = None,
) -> RunSettings:
    """Settings for the lambda `key` of the `lambdas` table, or for an explicit `lmbda` (which overrides the
    table's value); `metric` defaults to the table's, else mse."""
    root = (root or Path.cwd()).resolve()
    train = params.train
    entry = params.lambdas.get(key) if key else None
    lmbda = lmbda if lmbda is not None else (entry.lmbda if entry else None)
    metric = metric or (entry.metric if entry else METRICS[0])
    if lmbda is None:
        raise LicError(f"no lambda: {key!r} is not in the lambdas table of params.yaml and --lmbda was not given")
    if not lmbda > 0:
        raise LicError(f"lambda must be positive, got {lmbda}")
    if metric not in METRICS:
        raise LicError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    key = key or f"{metric}-{lmbda:g}"
    if not _KEY.fullmatch(key):
        raise LicError(f"lambda key {key!r} must be letters, digits, '.', '_' or '-' (it names folders and runs)")
    if not params.shards.validation_images:
        raise LicError("training validates on held-out images: set shards.validation_images to 1 or more")

    if params.profile not in train.steps:
        raise LicError(f"train.steps = {dict(train.steps)}: no entry for profile {params.profile!r}")
    steps = train.steps[params.profile]
    optimisation = Optimisation(
        steps=steps,
        lr=scaled_lr(train.lr, global_batch(params.loader, train.ray.num_workers), train.lr_batch),
        aux_lr=train.aux_lr,
        warmup_steps=warmup_steps(train.warmup, steps),
        min_lr=train.min_lr,
        clip_norm=train.clip_norm,
        amp=train.amp,
    )
    version = data_version(params.shards.dir, root)
    shaping = {
        "model": train.model.model_dump(),
        "lmbda": lmbda,
        "metric": metric,
        # the budget and what scales with it (warm-up) stay out, so raising train.steps continues the run
        "optimisation": {k: v for k, v in asdict(optimisation).items() if k not in ("steps", "warmup_steps")},
        "warmup": train.warmup,
        "seed": train.seed,
        "world_size": train.ray.num_workers,
        "loader": params.loader.model_dump(exclude={"workers"}, mode="json"),  # threads: the cluster's
        "data_version": version,
    }
    fingerprint = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    return RunSettings(
        key=key,
        lmbda=float(lmbda),
        metric=metric,
        model=train.model.name,
        model_config=dict(train.model.config),
        optimisation=optimisation,
        cluster=train.ray,
        seed=train.seed,
        log_every=train.log_every,
        val_every=train.val_every,
        checkpoint_every=train.checkpoint_every,
        loader=params.loader,
        shards=params.shards,
        root=str(root),
        data_version=version,
        run_name=f"{key}-{fingerprint}",
        storage_path=storage_path(train.storage_path, root),
        tracking_uri=tracking_uri(root),
        experiment=train.experiment,
        out_dir=str(root / train.outputs / key),
        mix_from_step=mix_start_step(params),
    )


def global_batch(loader: Loader, world_size: int) -> int:
    """Images per optimiser step over all ranks, counted in the mix's smallest crop size (the size a run starts
    with): world size x that size's batch per rank. Larger crops have smaller batches of about as many pixels."""
    return world_size * loader.batch_size[min(loader.crops)]


def data_version(shards: str, root: Path) -> str:
    """The DVC hash of the shard folder (`<md5>.dir`) as dvc.lock recorded it when the shard stage last ran;
    `unversioned` when the shards were not made by `dvc repro` here."""
    try:
        stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    except (OSError, KeyError, TypeError):
        return UNVERSIONED
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == shards and "md5" in out:
                return out["md5"]
    return UNVERSIONED


def storage_path(value: str, root: Path) -> str:
    """A URI (s3://...) as it is; a local folder made absolute, since Ray resolves it on other processes."""
    return value if "://" in value else str((root / value).resolve())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat
