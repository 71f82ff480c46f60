"""params.yaml, typed: the one place every knob of the pipeline is declared, validated and overridden.

The values live in params.yaml alone (one commented block, as nanoGPT keeps its defaults); this module declares
each key once with its type, range and help (as ffcv-imagenet does), and checks the rules that span sections. A
bad value fails at `load_params`, in one line naming the key, the value and what is allowed, before any stage
starts Ray, creates an MLflow run or touches DVC. Code receives its section (`params.loader`, `params.train`),
never a raw dict, so a typo cannot travel into a Ray worker.

Environment overrides are applied here and only here (ENV_OVERRIDES, listed in the README): shared infrastructure
points every run at one cluster or checkpoint store without editing params.yaml.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lic.errors import LicError, UsageError

PARAMS_FILE = "params.yaml"
METRICS = ("mse", "ms-ssim")  # distortion terms of the RD objective: lic.train.objective
STORAGE_SCHEMES = ("s3", "gs", "abfs", "hdfs")  # what pyarrow.fs (Ray Train's storage) resolves
ENV_OVERRIDES = {  # environment variable -> the params key it replaces
    "LIC_STORAGE_PATH": "train.storage_path",
    "RAY_ADDRESS": "train.ray.address",
    "LIC_SHARDS_REMOTE": "shards.remote",
}

Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]  # names folders, runs and DVC stages
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """Every section: unknown keys are refused (a typo is an error, not a silently ignored knob), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ConfigError(UsageError):
    """params.yaml (or an override) holds a value the pipeline cannot run with; nothing was attempted (exit 2)."""


class RuleError(ValueError):
    """A rule that spans keys broke: `key` (dotted, from the section it was raised in) and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key} = {value!r}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


# --- data: fetch@<source>, manifest@<source>, dedupe (docs/datasets.md) -------------------------------------------


class DataPaths(Section):
    raw: str = Field(description="fetch@<source> output: data/raw/<source>/")
    downloads: str = Field(description="partial downloads and archives, outside DVC so a failed fetch resumes")
    pins: str = Field(description="SHA-256 and size of downloads without a published checksum (commit it)")
    partitions: str = Field(description="manifest@<source>'s finished partitions, outside DVC: a rerun skips them")
    source_manifests: str = Field(description="manifest@<source> output folder: <source>.parquet")
    merged: str = Field(description="dedupe: every file of the active sources with its dedup decision")
    train: str = Field(description="dedupe: the deduplicated training images, what the shard stage reads")
    eval: str = Field(description="dedupe: the usable evaluation images")
    metrics: str = Field(description="dedupe: counts, as DVC metrics")
    report: str = Field(description="dedupe: the counts and every removed file, for people")


class Download(Section):
    retries: Count = Field(description="attempts after the first; each resumes where the last stopped")
    backoff_s: Annotated[float, Field(ge=0)] = Field(description="wait before retry n: backoff_s * 2**(n-1)")
    timeout_s: Annotated[float, Field(gt=0)] = Field(description="connect and read timeout")
    keep_archives: bool = Field(description="keep verified archives after packing")
    deadline_s: Annotated[float, Field(gt=0)] = Field(description="one file's attempts together give up after this")
    min_speed_kib_s: Annotated[float, Field(ge=0)] = Field(description="a slower connection is dropped and retried")
    speed_window_s: Annotated[float, Field(gt=0)] = Field(description="the window min_speed_kib_s is measured over")
    files_at_once: PositiveInt = Field(description="files downloaded at the same time")
    connections: PositiveInt = Field(description="parallel ranged requests per large file")
    part_mb: Annotated[float, Field(gt=0)] = Field(description="a file is split in parts of at least this size")


class ArchiveLimits(Section):
    """What one untrusted archive may cost; over a limit it is refused (or the member a reported skip)."""

    max_total_gb: Annotated[float, Field(gt=0)] = Field(description="bytes decompressed from one archive")
    max_member_mb: Annotated[float, Field(gt=0)] = Field(description="one member")
    max_ratio: Annotated[float, Field(ge=1)] = Field(description="decompressed / compressed bytes")


class MinSide(Section):
    train: PositiveInt = Field(description="shorter training images are skipped: the smallest crop")
    eval: PositiveInt = Field(description="shorter evaluation images are skipped: MS-SSIM needs 161 px")


class Hashing(Section):
    zooms: list[Annotated[float, Field(gt=0, lt=0.5)]] = Field(description="central crops hashed besides the image")


class NeighbourSearch(Section):
    """faiss binary range search: exact up to exact_max images, an IVF index beyond."""

    exact_max: PositiveInt = Field(description="IndexBinaryFlat compares all pairs up to this many images")
    nlist: Count = Field(description="IVF cells; 0 = 4 sqrt(n)")
    nprobe: PositiveInt = Field(description="cells visited per query: recall against speed")


class Confirmation(Section):
    """A pair the 64-bit search finds counts only when its 256-bit hashes are this close too."""

    near_threshold: Annotated[int, Field(ge=0, le=256)] = Field(description="256-bit distance of duplicates")
    leakage_threshold: Annotated[int, Field(ge=0, le=256)] = Field(description="the same, training vs evaluation")


class Dedupe(Section):
    near_threshold: Annotated[int, Field(ge=0, le=64)] = Field(description="Hamming distance of duplicates")
    leakage_threshold: Annotated[int, Field(ge=0, le=64)] = Field(description="the same, training vs evaluation")
    confirm: Confirmation
    search: NeighbourSearch


class RemoteFile(Section):
    url: str
    size: PositiveInt | None = None  # bytes; a download of another size is refused
    checksum: Annotated[str, Field(pattern=r"^(md5|sha1|sha256):[0-9a-f]+$")] | None = None


class SampleSource(Section):
    """Photographs shipped in the scikit-image and matplotlib wheels: the offline default."""

    adapter: Literal["sample"]
    license: str
    train: list[str]
    eval: list[str]


class LocalSource(Section):
    """A folder of images a team already has (for example under datasets/, versioned by datasets.dvc)."""

    adapter: Literal["local"]
    split: Literal["train", "eval"]
    license: str
    path: str


class HttpSource(Section):
    """Files (images or zip/tar archives) fetched over HTTP(S) and verified."""

    adapter: Literal["http"]
    split: Literal["train", "eval"]
    license: str
    files: list[RemoteFile]


class VimeoSource(Section):
    """Vimeo-90K septuplets: one archive, a list file, frames_per_sequence frames of each clip."""

    adapter: Literal["vimeo"]
    split: Literal["train", "eval"]
    license: str
    frames_per_sequence: Annotated[int, Field(ge=1, le=7)]
    list: str
    files: list[RemoteFile]


class HuggingFaceMirror(Section):
    url: str
    files: dict[str, list[str]]


class KaggleMirror(Section):
    url: str
    name: str


class ImageNetSource(Section):
    """Licence-gated: a local copy (datasets.dvc), the Hugging Face mirror (HF_TOKEN) or Kaggle's."""

    adapter: Literal["imagenet"]
    split: Literal["train", "eval"]
    license: str
    splits: list[Literal["train", "val"]]
    local: str
    checksums: dict[str, str]
    huggingface: HuggingFaceMirror
    kaggle: KaggleMirror


Source = Annotated[
    SampleSource | LocalSource | HttpSource | VimeoSource | ImageNetSource, Field(discriminator="adapter")
]


class Data(Section):
    profiles: dict[Key, list[Key]] = Field(description="sources per profile, in keep-preference order")
    paths: DataPaths
    download: Download
    archive_shard_mb: Annotated[float, Field(gt=0)] = Field(description="training images packed in tar shards this big")
    archive_limits: ArchiveLimits
    workers: Count = Field(description="manifest partitions described at once (Ray tasks); 0 = the cluster's CPUs")
    min_side: MinSide
    hash: Hashing
    dedupe: Dedupe
    sources: dict[Key, Source]

    @model_validator(mode="after")
    def _profiles_name_sources(self) -> Data:
        for profile, names in self.profiles.items():
            unknown = [name for name in names if name not in self.sources]
            if unknown:
                raise RuleError(f"profiles.{profile}", names, f"every source must be in data.sources ({unknown})")
        return self


# --- shards and loader (docs/data-loading.md) ---------------------------------------------------------------------


class Shards(Section):
    dir: str = Field(description="the shard set the training loader reads")
    metrics: str
    shard_size_mb: Annotated[float, Field(gt=0)] | dict[Key, Annotated[float, Field(gt=0)]] = Field(
        description="stored MB per .beton: one size, or one per profile"
    )
    max_resolution: PositiveInt = Field(description="longest side cap (INTER_AREA downscale)")
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] | None = Field(description="JPEG files stored as JPEG; null: raw")
    validation_images: Count = Field(description="training images held out for validation")
    crop_sizes: list[PositiveInt] = Field(description="crop sides the metrics count eligible images for")
    workers: PositiveInt = Field(description="FFCV writer processes per shard; Ray writes shards at once")
    remote: str | None = Field(description="the published shard set nodes stage from (any pyarrow URI); null: none")
    stage_dir: str = Field(description="node-local staging folder; LIC_STAGE_DIR on a node overrides it there")
    stall_timeout_s: Annotated[float, Field(gt=0)] = Field(description="stop a writer that stores nothing this long")


class Loader(Section):
    backend: Literal["ffcv", "pytorch"]
    crop_mix: dict[PositiveInt, Probability] = Field(description="share of batches per crop size")
    batch_size: dict[PositiveInt, PositiveInt] = Field(description="per rank, per crop size")
    workers: Count = Field(description="per rank: FFCV threads or DataLoader processes (0: in the training process)")
    flip: bool
    augment: list[dict[str, dict[str, Any]]] = Field(description="albumentations transforms, one mapping each")
    validation_crop: PositiveInt | None = Field(description="centre crop of the held-out images; null: whole")
    crop_mix_from: dict[Key, Probability] = Field(
        description="share of train.steps on the mix's smallest crop alone, by profile, then crop_mix"
    )

    @model_validator(mode="after")
    def _mix_is_a_distribution(self) -> Loader:
        if not self.crop_mix or not math.isclose(sum(self.crop_mix.values()), 1.0):
            raise RuleError("crop_mix", self.crop_mix, "shares of at least one crop size that add up to 1")
        missing = [side for side, share in self.crop_mix.items() if share > 0 and side not in self.batch_size]
        if missing:
            raise RuleError("batch_size", self.batch_size, f"no positive batch size for crop size {missing[0]}")
        return self

    @property
    def crops(self) -> dict[int, float]:
        """The crop sizes actually drawn: those with a positive share."""
        return {side: share for side, share in self.crop_mix.items() if share > 0}


# --- training (docs/training.md) ----------------------------------------------------------------------------------


class Lambda(Section):
    lmbda: Annotated[float, Field(gt=0)] = Field(description="rate-distortion trade-off")
    metric: Literal["mse", "ms-ssim"]


class ModelChoice(Section):
    name: str = Field(description="an architecture of the zoo: lic.models.zoo")
    config: dict[str, Any] = Field(description="its constructor arguments")


class RayCluster(Section):
    address: str | None = Field(description="a cluster to attach to; null: a local Ray started for the run")
    num_workers: PositiveInt = Field(description="DDP ranks")
    cpus_per_worker: PositiveInt = Field(description="CPUs per rank: its torch and loader threads")
    use_gpu: bool | Literal["auto"] = Field(description="auto: one GPU per rank when the cluster has enough")
    max_failures: Count = Field(description="restarts from the latest checkpoint before the run fails")
    keep_best: PositiveInt = Field(description="checkpoints kept for the best validation loss")


class Train(Section):
    model: ModelChoice
    steps: dict[Key, PositiveInt] = Field(description="optimiser steps per lambda, by profile")
    lr: Annotated[float, Field(gt=0)] = Field(description="Adam's rate for a global batch of lr_batch")
    lr_batch: PositiveInt = Field(description="the global batch lr is for; k times that uses sqrt(k) x lr")
    min_lr: Annotated[float, Field(ge=0)]
    warmup: Annotated[float, Field(ge=0, lt=1)] = Field(description="warm-up as a share of train.steps")
    aux_lr: Annotated[float, Field(gt=0)]
    clip_norm: Annotated[float, Field(gt=0)]
    amp: bool = Field(description="bfloat16 autocast on GPU; ignored on CPU")
    seed: int
    log_every: PositiveInt
    val_every: PositiveInt
    checkpoint_every: PositiveInt
    experiment: str = Field(description="MLflow experiment of the training runs")
    outputs: str = Field(description="<outputs>/<key>/model.pt and metrics.json")
    storage_path: str = Field(description="Ray's checkpoints: a local folder or s3://bucket/prefix?...")
    ray: RayCluster

    @field_validator("storage_path")
    @classmethod
    def _storage_is_a_folder_or_bucket(cls, value: str) -> str:
        if "://" in value:
            scheme, _, rest = value.partition("://")
            if scheme not in STORAGE_SCHEMES or not re.match(r"[a-z0-9][a-z0-9.-]{1,62}(/|\?|$)", rest):
                raise ValueError(f"a local folder or {'|'.join(STORAGE_SCHEMES)}://<bucket>[/prefix][?options]")
        elif not value.strip() or re.match(r"^[a-z0-9]+:/", value):
            raise ValueError(f"a local folder or {'|'.join(STORAGE_SCHEMES)}://<bucket>[/prefix][?options]")
        return value

    @model_validator(mode="after")
    def _schedule_is_consistent(self) -> Train:
        if self.min_lr > self.lr:
            raise RuleError("min_lr", self.min_lr, f"at most lr ({self.lr})")
        return self


# --- evaluation, report, registry (docs/evaluation.md, docs/registry.md) ------------------------------------------


class Anchor(Section):
    qualities: list[Annotated[int, Field(ge=0, le=100)]]
    options: dict[str, Any] = Field(description="Pillow save options")


class Evaluate(Section):
    out_dir: str
    complexity_size: PositiveInt = Field(description="kMAC/pixel counted at this size, as the paper does")
    anchors: dict[Literal["jpeg", "webp", "avif"], Anchor]


class Report(Section):
    out_dir: str
    anchor: str = Field(description="BD-rate and BD-PSNR are against this anchor codec")
    references: dict[str, str] = Field(description="evaluation source -> dataset name of the published curves")
    peers: list[str] = Field(
        description="evaluation folders (under evaluate.out_dir) of other checkpoints, drawn beside ours"
    )


class Registry(Section):
    experiment: str
    promotion_tolerance: Annotated[float, Field(ge=0)] = Field(description="champion moves if J <= J* (1 + tol)")
    quality_floor: Literal["jpeg", "webp", "avif", "none"] = Field(
        description="champion only if better than this anchor at the same bpp on the same images; none: no floor"
    )
    record: str = Field(description="the register stage's outcome")


class Params(Section):
    """The whole of params.yaml."""

    profile: Key
    data: Data
    shards: Shards
    loader: Loader
    lambdas: dict[Key, Lambda]
    train: Train
    evaluate: Evaluate
    report: Report
    registry: Registry

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        if self.profile not in self.data.profiles:
            raise RuleError("profile", self.profile, f"one of data.profiles ({', '.join(self.data.profiles)})")
        unshardable = sorted(set(self.loader.crops) - set(self.shards.crop_sizes))
        if unshardable:
            raise RuleError(
                "loader.crop_mix", self.loader.crop_mix, f"crops of shards.crop_sizes {self.shards.crop_sizes}"
            )
        if max(self.loader.crops) > self.shards.max_resolution:
            allowed = f"crops of at most shards.max_resolution ({self.shards.max_resolution} px)"
            raise RuleError("loader.crop_mix", self.loader.crop_mix, allowed)
        if self.report.anchor not in self.evaluate.anchors:
            allowed = f"one of evaluate.anchors ({', '.join(self.evaluate.anchors)})"
            raise RuleError("report.anchor", self.report.anchor, allowed)
        return self

    @property
    def active_sources(self) -> list[str]:
        """The sources of the active profile, in preference order (dedup keeps the copy from the earliest)."""
        return list(self.data.profiles[self.profile])

    def lmbda(self, key: str) -> Lambda:
        """The rate point `key` of the lambdas table."""
        if key not in self.lambdas:
            raise LicError(f"lambdas.{key}: no such rate point (params.yaml has {', '.join(self.lambdas)})")
        return self.lambdas[key]


def load_params(
    path: Path | str = PARAMS_FILE,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Params:
    """params.yaml, with `overrides` (dotted keys, as `dvc exp run -S` takes them) and the environment applied.

    A missing file, a bad value or a broken cross-section rule is a LicError naming the key: nothing has started.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LicError(f"{path} not found: run from the project root or pass --params") from None
    except yaml.YAMLError as err:
        raise LicError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise LicError(f"{path} must hold a mapping of parameters")
    environment = os.environ if env is None else env
    settings = {key: environment[name] for name, key in ENV_OVERRIDES.items() if environment.get(name)}
    for key, value in {**(overrides or {}), **settings}.items():
        _set(raw, key, value)
    return parse_params(raw, str(path))


def parse_params(raw: Mapping[str, Any], origin: str = PARAMS_FILE) -> Params:
    """A parsed params mapping, validated (no overrides: load_params applies them)."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{origin}: {describe(err)}") from None


def describe(err: ValidationError) -> str:
    """The first broken rule as `key = value: what is allowed` (one line; the count of further errors after)."""
    lines = []
    for error in err.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        where = ".".join(str(part) for part in error["loc"] if str(part) != "[key]")
        where = re.sub(r"\.(sample|local|http|vimeo|imagenet)(\.|$)", r"\2", where)  # the union tag is not a key
        if isinstance(cause, RuleError):
            lines.append(f"{where + '.' if where else ''}{cause.key} = {cause.value!r}: {cause.allowed}")
        elif error["type"] == "missing":
            lines.append(f"{where}: missing (every key of params.yaml is required; the project's file has them all)")
        elif error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (a typo? the keys of each section are in params.yaml)")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{where} = {error.get('input')!r}: {message}")
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return lines[0] + more


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise LicError(f"override {dotted}: {part} is not a section")
    tree[leaf] = value
