"""One training run's settings, resolved once on the driver from params.yaml and a lambda.

Workers receive this object as it is, so everything relative is made absolute here: Ray starts workers in a
session directory of its own, possibly on another machine. The run name is the lambda key plus a fingerprint of
everything that shapes the trained weights except the step budget, so re-running the same settings resumes the
same run, raising `steps` continues it, and changing the lambda (or the data, model, optimiser) starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lic.errors import LicError
from lic.train.schedule import scaled_lr, warmup_steps
from lic.train.staging import REMOTE_ENV

METRICS = ("mse", "ms-ssim")
FAIL_AT_STEP_ENV = "LIC_TRAIN_FAIL_AT_STEP"  # fault-injection hook of the tests: docs/training.md
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
class Cluster:
    """Where and how wide the run is: Ray's ScalingConfig, FailureConfig and CheckpointConfig come from here."""

    address: str | None  # None: RAY_ADDRESS if set, else a local Ray started for this run
    num_workers: int
    cpus_per_worker: int
    use_gpu: bool | None  # None: one GPU per worker when the cluster has enough of them
    max_failures: int
    keep_best: int


@dataclass(frozen=True)
class RunSettings:
    key: str
    lmbda: float
    metric: str
    model: str
    model_config: dict[str, Any]
    optimisation: Optimisation
    cluster: Cluster
    seed: int
    log_every: int
    val_every: int
    checkpoint_every: int
    params: dict[str, Any]  # the whole file: the loader reads its own section
    root: str  # the project root; workers work from here so the paths in params resolve
    data_version: str
    run_name: str
    storage_path: str  # absolute local folder or s3://bucket/prefix?endpoint_override=...
    tracking_uri: str
    experiment: str
    out_dir: str  # outputs/train/<key>: model.pt and metrics.json
    shards_remote: str | None  # the published shard set nodes stage from; None: every node reads shards.dir
    fail_at_step: int | None = None

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
            "loader": self.params.get("loader"),
            "data_version": self.data_version,
            "run_name": self.run_name,
        }
        return _flatten(shaping)


def resolve(
    params: dict[str, Any],
    key: str | None = None,
    lmbda: float | None = None,
    metric: str | None = None,
    root: Path | None = None,
) -> RunSettings:
    """Settings for the lambda `key` of the `lambdas` table, or for an explicit `lmbda` (which overrides the
    table's value); `metric` defaults to the table's, else mse."""
    root = (root or Path.cwd()).resolve()
    train = _section(params, "train")
    entry = params.get("lambdas", {}).get(key, {}) if key else {}
    lmbda = lmbda if lmbda is not None else entry.get("lmbda")
    metric = metric or entry.get("metric", "mse")
    if lmbda is None:
        raise LicError(f"no lambda: {key!r} is not in the lambdas table of params.yaml and --lmbda was not given")
    if not lmbda > 0:
        raise LicError(f"lambda must be positive, got {lmbda}")
    if metric not in METRICS:
        raise LicError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    key = key or f"{metric}-{lmbda:g}"
    if not _KEY.fullmatch(key):
        raise LicError(f"lambda key {key!r} must be letters, digits, '.', '_' or '-' (it names folders and runs)")

    if not params.get("shards", {}).get("validation_images"):
        raise LicError("training validates on held-out images: set shards.validation_images to 1 or more")
    profile = params.get("profile", "sample")
    steps = _section(train, "steps").get(profile)
    if steps is None:
        raise LicError(f"train.steps has no entry for profile {profile!r}")
    steps = _positive(steps, "train.steps")
    ray = _section(train, "ray")
    num_workers = _positive(ray["num_workers"], "train.ray.num_workers")
    optimisation = Optimisation(
        steps=steps,
        lr=scaled_lr(
            float(train["lr"]), global_batch(params, num_workers), _positive(train["lr_batch"], "train.lr_batch")
        ),
        aux_lr=float(train["aux_lr"]),
        warmup_steps=warmup_steps(float(train["warmup"]), steps),
        min_lr=float(train["min_lr"]),
        clip_norm=float(train["clip_norm"]),
        amp=bool(train["amp"]),
    )
    use_gpu = ray["use_gpu"]
    cluster = Cluster(
        address=ray.get("address"),
        num_workers=num_workers,
        cpus_per_worker=_positive(ray["cpus_per_worker"], "train.ray.cpus_per_worker"),
        use_gpu=None if use_gpu == "auto" else bool(use_gpu),
        max_failures=int(ray["max_failures"]),
        keep_best=_positive(ray["keep_best"], "train.ray.keep_best"),
    )
    model = _section(train, "model")
    version = data_version(params, root)
    shaping = {
        "model": model,
        "lmbda": lmbda,
        "metric": metric,
        # the budget and what scales with it (warm-up) stay out, so raising train.steps continues the run
        "optimisation": {k: v for k, v in asdict(optimisation).items() if k not in ("steps", "warmup_steps")},
        "warmup": train["warmup"],
        "seed": train["seed"],
        "world_size": cluster.num_workers,
        "loader": {k: v for k, v in params.get("loader", {}).items() if k != "workers"},  # threads: Cluster
        "data_version": version,
    }
    fingerprint = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    fail_at = os.environ.get(FAIL_AT_STEP_ENV)
    return RunSettings(
        key=key,
        lmbda=float(lmbda),
        metric=metric,
        model=model["name"],
        model_config=dict(model.get("config") or {}),
        optimisation=optimisation,
        cluster=cluster,
        seed=int(train["seed"]),
        log_every=_positive(train["log_every"], "train.log_every"),
        val_every=_positive(train["val_every"], "train.val_every"),
        checkpoint_every=_positive(train["checkpoint_every"], "train.checkpoint_every"),
        params=params,
        root=str(root),
        data_version=version,
        run_name=f"{key}-{fingerprint}",
        storage_path=storage_path(os.environ.get(STORAGE_ENV) or str(train["storage_path"]), root),
        tracking_uri=tracking_uri(root),
        experiment=str(train["experiment"]),
        out_dir=str(root / train["outputs"] / key),
        shards_remote=os.environ.get(REMOTE_ENV) or params["shards"].get("remote"),
        fail_at_step=int(fail_at) if fail_at else None,
    )


def global_batch(params: dict[str, Any], world_size: int) -> int:
    """Images per optimiser step over all ranks, counted in the mix's smallest crop size (the size a run starts
    with): world size x that size's batch per rank. Larger crops have smaller batches of about as many pixels."""
    from lic.data.loader import crop_plan  # the loader checks and owns its batch sizes

    mix, batch_sizes = crop_plan(params["loader"])
    return world_size * batch_sizes[min(mix)]


def data_version(params: dict[str, Any], root: Path) -> str:
    """The DVC hash of the shard folder (`<md5>.dir`) as dvc.lock recorded it when the shard stage last ran;
    `unversioned` when the shards were not made by `dvc repro` here."""
    shards = params.get("shards", {}).get("dir")
    try:
        stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    except (OSError, KeyError, TypeError):
        return UNVERSIONED
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == shards and "md5" in out:
                return out["md5"]
    return UNVERSIONED


# Shared infrastructure (infra/README.md) points every run at one checkpoint store without editing params.yaml.
STORAGE_ENV = "LIC_STORAGE_PATH"


def storage_path(value: str, root: Path) -> str:
    """A URI (s3://...) as it is; a local folder made absolute, since Ray resolves it on other processes."""
    return value if "://" in value else str((root / value).resolve())


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI, else MLflow's own default store, a SQLite file at the project root (absolute, since
    workers run elsewhere). Several machines need a tracking server: docs/training.md."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(root / uri[len(prefix) :])
    return uri


def _section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise LicError(f"params.yaml has no {name!r} section")
    return value


def _positive(value: Any, name: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise LicError(f"{name} must be a positive integer, got {value!r}")
    return value


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat
