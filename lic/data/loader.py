"""The training data loader: random fixed-size crops of the shards, a seeded mix of crop sizes, on any device.

Every batch has one crop size (a batch is one tensor). Which size a step uses is drawn from `loader.crop_mix` by a
generator seeded with (seed, epoch) only, so every rank uses the same size at the same step and DDP's collectives
line up; before `loader.crop_mix_from` of the run every step uses the smallest (lic.train.schedule). The images
are split between ranks: each crop size has its own pass over the images big enough for it, divided by a
DistributedSampler, and starts another pass when one ends. An epoch has as many steps as it takes to show about one
crop per training image on each rank.

The images live in the shard set (`data/shards/`, lic.data.shards): `shards=` picks which train shards this rank
reads (None: all, each pass then split between the ranks), so ranks of a multi-node run can read disjoint shards;
an epoch's length is counted over all train shards either way, so every rank runs the same number of steps. A pass
visits its shards in an order drawn from (seed, pass) and each shard in its own random order; the short last batch
of a shard is completed from the next one, so every batch is full.

Two backends yield the same batches: `ffcv` (FFCV's loader, decoded by numba threads) and `pytorch` (a DataLoader
whose worker processes read the same stored samples from the .beton files; for comparison). Flips and the optional
albumentations transforms are applied here, the same way for both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lic.data.shards import TRAIN, ShardFiles
from lic.errors import LicError
from lic.params import Loader, Shards
from lic.train.schedule import crop_sizes


class CropSource(Protocol):
    """uint8 B x S x S x 3 CPU batches of one crop size, one pass over its images at a time."""

    def batches(self, pass_index: int) -> Iterator[torch.Tensor]: ...


class TrainLoader:
    """Training batches: float32 B x 3 x S x S in [0, 1] on `device`, one crop size per batch."""

    def __init__(
        self,
        sources: dict[int, CropSource],
        mix: dict[int, float],
        steps: int,
        *,
        mix_from_step: int,
        device: torch.device,
        seed: int,
        rank: int,
        flip: bool,
        augment: Callable[..., dict[str, Any]] | None,
    ) -> None:
        self.crop_sizes: tuple[int, ...] = tuple(sorted(sources))
        self.sources, self.mix, self.steps, self.mix_from_step = sources, mix, steps, mix_from_step
        self.device, self.seed, self.rank = device, seed, rank
        self.flip, self.augment = flip, augment

    def __len__(self) -> int:
        """Batches per epoch for this rank, the same on every rank."""
        return self.steps

    def schedule(self, epoch: int) -> list[int]:
        """The crop size of each step of `epoch`."""
        return crop_sizes(self.mix, self.steps, self.seed, epoch, self.mix_from_step)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        """float32 B x 3 x S x S in [0, 1] on `device`; one crop size per batch; the size sequence is deterministic
        given (seed, epoch) and identical on every rank; ranks see disjoint samples of each pass."""
        streams = {side: self._stream(side, epoch) for side in self.crop_sizes}
        flips = np.random.default_rng([self.seed, epoch, self.rank])
        try:
            for side in self.schedule(epoch):
                yield self._to_training(next(streams[side]), flips)
        finally:
            for stream in streams.values():
                stream.close()  # stops a half-read pass (FFCV's prefetching thread, DataLoader workers' queue)

    def _stream(self, side: int, epoch: int) -> Iterator[torch.Tensor]:
        """Batches of one size for an epoch, from passes epoch * len(self) + 0, 1, ...: a pass has at least one
        batch, so an epoch never reaches the passes of the next, and each epoch is reproducible on its own."""
        source = self.sources[side]
        for k in itertools.count():
            yield from source.batches(epoch * self.steps + k)

    def _to_training(self, images: torch.Tensor, flips: np.random.Generator) -> torch.Tensor:
        """uint8 B x S x S x 3 on the CPU -> augmented, mirrored float32 B x 3 x S x S in [0, 1] on the device."""
        if self.augment is not None:
            augmented = np.stack([self.augment(image=image)["image"] for image in images.numpy()])
            if augmented.shape != tuple(images.shape) or augmented.dtype != np.uint8:
                raise LicError(f"loader.augment changed the crops to {augmented.dtype} {augmented.shape}")
            images = torch.from_numpy(augmented)
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # uint8 over the bus: 4x less
        batch = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        if self.flip:
            mirrored = torch.from_numpy(flips.random(len(batch)) < 0.5).to(self.device)
            batch = torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)
        return batch


def build_train_loader(
    config: Loader,
    shard_set: Shards,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    shards: Sequence[int] | None = None,
    mix_from_step: int = 0,
) -> TrainLoader:
    """The loader `config` describes over the train shards of `shard_set` (`shards`: which ones this rank reads,
    None for all of them; `mix_from_step`: the first step drawn from the crop mix, lic.train.schedule);
    `world_size > 1` needs torch.distributed initialised (with that size and this rank)."""
    mix = config.crops
    batch_sizes = {side: config.batch_size[side] for side in mix}
    _check_ranks(rank, world_size, seed)
    files = ShardFiles.of(shard_set)
    index = files.read_index()
    train = index.filter(pc.equal(index["split"], TRAIN))
    chosen = _chosen_shards(train, shards)
    short_sides = np.minimum(train["width"].to_numpy(), train["height"].to_numpy())
    in_chosen = np.isin(train["shard"].to_numpy(), chosen)
    eligible = {side: in_chosen & (short_sides >= side) for side in mix}
    readers = 1 if shards is not None else world_size  # an explicit subset is this rank's alone: no further split
    for side, selected in eligible.items():
        if selected.sum() < batch_sizes[side] * readers:
            raise LicError(
                f"{selected.sum()} training images of the chosen shards allow a {side}x{side} crop, but a batch of "
                f"{batch_sizes[side]} on {readers} rank(s) needs {batch_sizes[side] * readers}: give "
                f"loader.crop_mix {side}: 0, a smaller loader.batch_size, or more shards"
            )
    backend = config.backend
    workers = config.workers
    device = torch.device(device)
    samples = {side: train.filter(pa.array(selected)) for side, selected in eligible.items()}
    if backend == "ffcv":
        sources = _ffcv_sources(files.directory, samples, batch_sizes, workers, seed, readers)
    elif backend == "pytorch":
        sources = {
            side: TorchCrops(
                StoredCrops(files.directory, chosen_rows, side),
                batch_sizes[side],
                workers=workers,
                seed=seed,
                rank=rank if readers > 1 else 0,
                world_size=readers,
                pin_memory=device.type == "cuda",
            )
            for side, chosen_rows in samples.items()
        }
    smallest = min(mix)  # the smallest crop can use every image; counted over all train shards
    images_per_rank = math.ceil(int((short_sides >= smallest).sum()) / world_size)
    steps = max(1, round(images_per_rank / sum(mix[side] * batch_sizes[side] for side in mix)))
    augment = build_augment(config.augment, seed=seed, rank=rank)
    return TrainLoader(
        sources,
        mix,
        steps,
        mix_from_step=mix_from_step,
        device=device,
        seed=seed,
        rank=rank,
        flip=config.flip,
        augment=augment,
    )


def _chosen_shards(train: pa.Table, shards: Sequence[int] | None) -> np.ndarray:
    """The train shard numbers to read, checked against the index."""
    available = np.unique(train["shard"].to_numpy())
    if shards is None:
        return available
    chosen = np.unique(np.asarray(list(shards), dtype=np.int64))
    unknown = np.setdiff1d(chosen, available)
    if not len(chosen) or len(unknown):
        raise LicError(
            f"shards={list(shards)}: the shard set has train shards 0-{available.max()}"
            + (f", not {unknown.tolist()}" if len(unknown) else ", and at least one must be chosen")
        )
    return chosen


def _check_ranks(rank: int, world_size: int, seed: int) -> None:
    if seed < 0 or not 0 <= rank < world_size:
        raise LicError(f"need seed >= 0 and 0 <= rank < world_size, got seed {seed}, rank {rank} of {world_size}")
    if world_size > 1 and not (
        dist.is_available() and dist.is_initialized() and (dist.get_world_size(), dist.get_rank()) == (world_size, rank)
    ):
        raise LicError(f"world_size {world_size} needs torch.distributed initialised with that size, as rank {rank}")


def _ffcv_sources(
    folder: Path, samples: dict[int, pa.Table], batch_sizes: dict[int, int], workers: int, seed: int, readers: int
) -> dict[int, CropSource]:
    try:
        from lic.data.beton import FfcvCrops
    except ImportError as err:
        raise LicError(
            f"loader.backend is ffcv, but FFCV does not import ({err}); use loader.backend: pytorch"
        ) from None
    sources: dict[int, CropSource] = {}
    for side, rows in samples.items():
        parts = {}
        for file, indices in _rows_by_file(rows).items():
            parts[file] = partial(
                FfcvCrops, folder / file, side, batch_sizes[side], indices,
                workers=workers, seed=seed, distributed=readers > 1,
            )  # fmt: skip
        sources[side] = ShardedCrops(parts, batch_sizes[side], seed)
    return sources


def _rows_by_file(rows: pa.Table) -> dict[str, np.ndarray]:
    """{shard file: sample indices in it} of index rows, in shard order."""
    files = rows["file"].to_numpy(zero_copy_only=False)
    sample_rows = rows["row"].to_numpy()
    return {str(file): np.sort(sample_rows[files == file]) for file in sorted(set(files.tolist()))}


class ShardedCrops:
    """The FFCV backend's CropSource for one crop size over several shards: one FFCV loader per shard, made at
    its first use (FFCV compiles its pipeline then) and kept; each pass visits the shards in an order drawn from
    (seed, pass) and joins a shard's short last batch with the next shard's first."""

    def __init__(self, parts: dict[str, Callable[[], Any]], batch_size: int, seed: int) -> None:
        self.parts, self.batch_size, self.seed = parts, batch_size, seed
        self.loaders: dict[str, Any] = {}

    def batches(self, pass_index: int) -> Iterator[torch.Tensor]:
        order = np.random.default_rng([self.seed, pass_index]).permutation(sorted(self.parts))
        return full_batches(self._pieces(order.tolist(), pass_index), self.batch_size)

    def _pieces(self, order: list[str], pass_index: int) -> Iterator[torch.Tensor]:
        for file in order:
            if file not in self.loaders:
                self.loaders[file] = self.parts[file]()
            yield from self.loaders[file].batches(pass_index)


def full_batches(pieces: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of exactly `batch_size` from batches of at most that size: full ones pass through untouched (views
    of the producer's buffer), short ones are copied and joined; a short remainder at the end is dropped."""
    pending: list[torch.Tensor] = []
    count = 0
    try:
        for piece in pieces:
            if not pending and len(piece) == batch_size:
                yield piece
                continue
            pending.append(piece.clone())
            count += len(piece)
            if count >= batch_size:
                joined = torch.cat(pending)
                yield joined[:batch_size]
                pending = [joined[batch_size:]] if count > batch_size else []
                count -= batch_size
    finally:
        pieces.close()  # stops a half-read shard's FFCV iterator


class StoredCrops(Dataset):
    """Random side x side crops (uint8 S x S x 3) of the stored samples the index rows name, read from the
    .beton files directly (lic.data.beton.StoredSamples), one file handle set per worker process."""

    def __init__(self, folder: Path, rows: pa.Table, side: int) -> None:
        self.folder, self.side = folder, side
        self.files = rows["file"].to_pylist()
        self.rows = rows["row"].to_numpy()
        self.opened: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        from lic.data.beton import StoredSamples

        file = self.files[index]
        if file not in self.opened:
            self.opened[file] = StoredSamples(self.folder / file)
        pixels = self.opened[file].pixels(int(self.rows[index]))
        row = int(torch.randint(pixels.shape[0] - self.side + 1, ()))  # torch's generator: seeded per worker
        column = int(torch.randint(pixels.shape[1] - self.side + 1, ()))
        return torch.from_numpy(pixels[row : row + self.side, column : column + self.side].copy())


class TorchCrops:
    """The PyTorch backend's CropSource: a DataLoader over StoredCrops, each pass split between ranks."""

    def __init__(
        self, dataset: StoredCrops, batch_size: int, *, workers: int, seed: int, rank: int, world_size: int,
        pin_memory: bool,
    ) -> None:  # fmt: skip
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
        )

    def batches(self, pass_index: int) -> Iterator[torch.Tensor]:
        self.sampler.set_epoch(pass_index)
        yield from self.loader


def build_augment(specs: list[dict[str, Any]], *, seed: int, rank: int) -> Callable[..., dict[str, Any]] | None:
    """An albumentations Compose from `loader.augment` ([{TransformName: {argument: value}}, ...]); None if empty."""
    if not specs:
        return None
    import albumentations

    transforms = []
    for spec in specs:
        if not (isinstance(spec, dict) and len(spec) == 1):
            raise LicError(f"loader.augment entries look like {{HorizontalFlip: {{p: 0.5}}}}, not {spec!r}")
        ((name, arguments),) = spec.items()
        transform = getattr(albumentations, str(name), None)
        if not isinstance(transform, type):
            raise LicError(f"loader.augment: albumentations has no transform {name!r}")
        transforms.append(transform(**(arguments or {})))
    return albumentations.Compose(transforms, seed=int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
