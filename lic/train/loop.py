"""What every Ray worker runs: the training loop, top to bottom.

Each rank builds the same model (same seed; DDP also broadcasts rank 0's weights), restores the latest checkpoint
if the run has one, and reads its own part of every epoch from the loader. A step is: batch, RD loss, backward
(DDP averages the gradients), clip, main step, then the auxiliary loss and its step. The auxiliary loss depends
only on the entropy bottleneck's parameters, which DDP keeps equal on every rank, so its step is identical on
every rank without a collective. Rank 0 validates, logs to MLflow and writes checkpoints; every rank reports to
Ray at a checkpoint, which is where Ray keeps the workers in step.

Buffers are not synchronised at each forward (`forward_sync_buffers=False`): the model's only buffers are the
entropy coder's CDF tables, which training does not read and which rank 0 alone rebuilds before saving.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.nn.functional as F
from ray.train import Checkpoint
from ray.train.torch import get_device, prepare_model
from torch import Tensor, nn
from torch.optim import Optimizer

from lic.data.loader import TrainLoader, build_train_loader
from lic.models import build
from lic.params import Loader, Shards
from lic.train.objective import RateDistortionLoss, make_optimizers
from lic.train.resume import restore_checkpoint, write_checkpoint
from lic.train.schedule import learning_rate
from lic.train.settings import RunSettings
from lic.train.staging import NodePlan, plan_and_stage, stage_dir
from lic.train.tracking import Tracker
from lic.train.validation import load_validation_images, validate

log = logging.getLogger(__name__)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker; config = {"settings": RunSettings, "mlflow_run_id": str}."""
    settings: RunSettings = config["settings"]
    run_id: str = config["mlflow_run_id"]
    os.chdir(settings.root)  # Ray starts workers in its session folder; the paths in params are project-relative
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    lead = rank == 0
    threads = settings.cluster.cpus_per_worker
    torch.set_num_threads(threads)
    device = get_device()
    opt = settings.optimisation
    amp = opt.amp and device.type == "cuda"

    # Model, optimisers, objective, and the latest checkpoint if the run has one.
    torch.manual_seed(settings.seed)
    model = build(settings.model, **settings.model_config).to(device).train()
    optimizer, aux_optimizer = make_optimizers(model, opt.lr, opt.aux_lr)
    criterion = RateDistortionLoss(lmbda=settings.lmbda, metric=settings.metric)
    start = 0
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        start = _restore(checkpoint, model, optimizer, aux_optimizer)
    if start >= opt.steps:  # a finished run asked again: Ray's result is its latest checkpoint, as it is
        return
    ddp_model = prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})

    # Data. A Ray worker has cpus_per_worker CPUs, so its loader decodes with that many threads (loader.workers
    # is for one process), and FFCV sets torch's thread count to the same. With a published shard set, this node
    # stages what its ranks read and everything is read from there (lic.train.staging); else from shards.dir.
    loader_config = settings.loader.model_copy(update={"workers": threads})
    shard_set, plan = settings.shards, None
    if settings.shards.remote:
        plan = _stage(settings, rank, world_size)
        shard_set = shard_set.model_copy(update={"dir": str(plan.directory)})
    options = {"rank": rank, "world_size": world_size, "device": device, "seed": settings.seed}
    loaders = EpochLoaders(loader_config, shard_set, plan, mix_from_step=settings.mix_from_step, **options)
    batches = _batches_from(loaders, start)

    nodes = _node_of_each_rank(world_size)
    tracker, validation_images = None, []
    if lead:
        tracker = Tracker(settings, run_id, device, nodes)
        validation_images = [image.to(device) for image in load_validation_images(loader_config, shard_set)]
        log.info("%s: steps %d -> %d on %d worker(s), %d per epoch", settings.run_name, start, opt.steps, world_size,
                 len(loaders))  # fmt: skip

    meter = Meter()
    step = start
    while step < opt.steps:
        lr = learning_rate(step, opt)
        for group in optimizer.param_groups:
            group["lr"] = lr
        clock = Clock(device)
        x = next(batches)
        clock.lap("data")
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            output = ddp_model(x)
        output = _float32(output)
        losses = criterion(output, x)
        clock.lap("forward")
        losses["loss"].backward()
        clock.lap("backward")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_norm)
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        clock.lap("optimizer")
        step += 1
        # The MSE objective already computed the batch MSE; an MS-SSIM run measures it for the PSNR it logs.
        mse = losses["mse_loss"] if "mse_loss" in losses else F.mse_loss(output["x_hat"].detach(), x)
        meter.add(
            {
                "loss": losses["loss"].item(),
                "bpp": losses["bpp_loss"].item(),
                "mse": mse.item(),
                "aux_loss": aux_loss.item(),
                "grad_norm": grad_norm.item(),
                "lr": lr,
            },
            samples=x.shape[0] * world_size,
            laps=clock.laps,
            in_totals=step > start + 1,  # an attempt's first step pays for JIT compilation and warm-up
        )

        if lead and (step % settings.log_every == 0 or step == opt.steps):
            metrics = meter.window()
            tracker.log(step, metrics)
            log.info(
                "step %d/%d  loss %.4f  bpp %.4f  psnr %.2f  samples/s %.2f  lr %.2e",
                *(step, opt.steps, metrics["loss"], metrics["bpp"], metrics["psnr"], metrics["samples_per_s"], lr),
            )
        checkpoint_due = step % settings.checkpoint_every == 0 or step == opt.steps
        report: dict[str, Any] = {"step": step, "start_step": start, "nodes": len(set(nodes))}
        if lead and (checkpoint_due or step % settings.val_every == 0):
            scores = {f"val_{name}": value for name, value in validate(model, validation_images, criterion).items()}
            tracker.log(step, scores)
            report |= scores | meter.totals()
        if checkpoint_due:
            with tempfile.TemporaryDirectory(prefix="lic-checkpoint-") as directory:
                checkpoint = None
                if lead:
                    metadata = {
                        "key": settings.key,
                        "lmbda": settings.lmbda,
                        "metric": settings.metric,
                        "data_version": settings.data_version,
                        "run_name": settings.run_name,
                        "mlflow_run_id": run_id,
                    }
                    model_file = write_checkpoint(Path(directory), model, optimizer, aux_optimizer, step, **metadata)
                    if step == opt.steps:
                        tracker.log_checkpoint(model_file)
                    checkpoint = Checkpoint.from_directory(directory)
                ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:08d}")
    if lead:
        tracker.finish()


def _restore(checkpoint: Checkpoint, model: nn.Module, optimizer: Optimizer, aux_optimizer: Optimizer) -> int:
    """Each rank reads a copy of its own. Ray's shared download folder (`Checkpoint.as_directory`) lets a rank that
    comes after another has finished downloading download again over the files the first is still reading: seen
    here with two ranks on one machine and S3 storage, as a corrupted read of state.pt."""
    with tempfile.TemporaryDirectory(prefix="lic-restore-") as directory:
        checkpoint.to_directory(directory)
        return restore_checkpoint(Path(directory), model, optimizer, aux_optimizer)


def _stage(settings: RunSettings, rank: int, world_size: int) -> NodePlan:
    """Stage this node's part of the published shard set; every rank takes part (they agree on who reads what)."""

    def gather(value: Any) -> list[Any]:
        if world_size == 1:
            return [value]
        values: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(values, value)
        return values

    node = ray.get_runtime_context().get_node_id()
    directory = stage_dir(settings.shards.stage_dir)
    plan = plan_and_stage(settings.shards.remote, directory, world_size=world_size, node=node,
                          rank=rank, seed=settings.seed, gather=gather)  # fmt: skip
    report = plan.report
    log.info("node %s staged %d file(s), %.2f GB in %.1f s, reused %d, in %s", node[:8], len(report.downloaded),
             report.bytes_downloaded / 1e9, report.seconds, len(report.reused), plan.directory)  # fmt: skip
    return plan


class EpochLoaders:
    """The loader of each epoch: over the rank's shards of that epoch when the node staged a plan (ranks of a node
    trade shards between epochs), else over every shard, split by rank. A new loader only when the shards change;
    every one has the same length (it is counted over the whole set)."""

    def __init__(self, config: Loader, shard_set: Shards, plan: NodePlan | None, **options: Any) -> None:
        self.config, self.shard_set, self.plan, self.options = config, shard_set, plan, options
        self.shards: tuple[int, ...] | None = None
        self.loader = self._build(0)

    def _build(self, epoch: int) -> TrainLoader:
        self.shards = tuple(self.plan.shards(epoch)) if self.plan else None
        return build_train_loader(self.config, self.shard_set, shards=self.shards, **self.options)

    def __len__(self) -> int:
        return len(self.loader)

    def of(self, epoch: int) -> TrainLoader:
        if self.plan and tuple(self.plan.shards(epoch)) != self.shards:
            self.loader = self._build(epoch)
        return self.loader


def _batches_from(loaders: EpochLoaders, step: int) -> Iterator[Tensor]:
    """Endless batches starting at `step`: epoch e holds steps e * len(loaders) onwards, and an epoch's batches
    depend only on (seed, epoch), so a resumed run sees the batches it would have seen (skipped ones are still
    decoded: a resume costs up to one epoch of loading)."""
    epoch, skip = divmod(step, len(loaders))
    while True:
        yield from itertools.islice(loaders.of(epoch).epoch(epoch), skip, None)
        epoch, skip = epoch + 1, 0


def _node_of_each_rank(world_size: int) -> list[str]:
    """The Ray node id of every rank, in rank order: which machines the run really used."""
    node = ray.get_runtime_context().get_node_id()
    if world_size == 1:
        return [node]
    nodes: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def _float32(output: dict[str, Any]) -> dict[str, Any]:
    """The loss in float32 even when the forward ran in bfloat16 (a no-op otherwise)."""
    return {"x_hat": output["x_hat"].float(), "likelihoods": {k: v.float() for k, v in output["likelihoods"].items()}}


class Clock:
    """Wall time of the phases of a step; waits for the GPU at each lap, so the split is real there too."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[phase] = now - self.last
        self.last = now


class Meter:
    """Sums of step metrics since the last log line (`window`) and over the attempt (`totals`), as means."""

    def __init__(self) -> None:
        self.recent: dict[str, float] = defaultdict(float)
        self.overall: dict[str, float] = defaultdict(float)

    def add(self, values: dict[str, float], samples: int, laps: dict[str, float], in_totals: bool) -> None:
        entry = {**values, **{f"time_{phase}_s": seconds for phase, seconds in laps.items()}}
        entry |= {"samples": samples, "seconds": sum(laps.values()), "steps": 1}
        for sums in (self.recent, self.overall) if in_totals else (self.recent,):
            for name, value in entry.items():
                sums[name] += value

    def window(self) -> dict[str, float]:
        means = _means(self.recent)
        self.recent.clear()
        return means

    def totals(self) -> dict[str, float]:
        """Means over the attempt, for the stage's metrics and the benchmark (empty before the second step)."""
        return {f"mean_{name}": value for name, value in _means(self.overall).items()}


def _means(sums: dict[str, float]) -> dict[str, float]:
    if not sums:
        return {}
    steps = sums["steps"]
    means = {name: value / steps for name, value in sums.items() if name not in ("samples", "seconds", "steps")}
    means["psnr"] = 10 * math.log10(1 / means["mse"]) if means["mse"] > 0 else math.inf
    means["samples_per_s"] = sums["samples"] / sums["seconds"]
    return means
