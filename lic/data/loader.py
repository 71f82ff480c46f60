"""The training data loader: random fixed-size crops of the shards, a seeded mix of crop sizes, on any device.

Every batch has one crop size (a batch is one tensor). Which size a step uses is drawn from `loader.crop_mix` by a
generator seeded with (seed, epoch) only, so every rank uses the same size at the same step and DDP's collectives
line up; before `loader.crop_mix_from` of the run every step uses the smallest (lic.train.schedule). The images
are split between ranks: each crop size has its own pass over the images big enough for it, divided by a
DistributedSampler, and starts another pass when one ends. An epoch has as many steps as it takes to show about one
crop per training image on each rank.

Two backends yield the same batches: `ffcv` (the .beton, decoded by numba threads) and `pytorch` (a DataLoader
whose worker processes decode the same source images with Pillow; for comparison, and where FFCV cannot be
installed). Flips and the optional albumentations transforms are applied here, the same way for both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lic.data.dedupe import MERGED_SCHEMA
from lic.data.manifest import read_manifest
from lic.data.shards import METADATA_SCHEMA, ShardFiles, read_pixels
from lic.errors import LicError
from lic.train.schedule import crop_sizes, mix_start_step

BACKENDS = ("ffcv", "pytorch")
MODEL_STRIDE = 64  # the model's total downsampling: validation images are cropped to multiples of it


class CropSource(Protocol):
    """uint8 B x S x S x 3 CPU batches of one crop size, one pass over its images at a time."""

    def __len__(self) -> int: ...  # batches per pass on this rank

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
    params: dict[str, Any],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> TrainLoader:
    """The loader `params['loader']` describes over the shards; `world_size > 1` needs torch.distributed
    initialised (with that size and this rank)."""
    config = params["loader"]
    mix, batch_sizes = crop_plan(config)
    _check_ranks(rank, world_size, seed)
    max_side = int(params["shards"]["max_resolution"])
    files = ShardFiles.of(params)
    metadata = _read_shard_table(files.metadata, METADATA_SCHEMA).to_pydict()
    short_sides = np.minimum(metadata["width"], metadata["height"])
    indices = {side: np.flatnonzero(short_sides >= side) for side in mix}
    for side, eligible in indices.items():
        if len(eligible) < batch_sizes[side] * world_size:
            raise LicError(
                f"{len(eligible)} training images allow a {side}x{side} crop, but a batch of {batch_sizes[side]} on "
                f"{world_size} rank(s) needs {batch_sizes[side] * world_size}: give loader.crop_mix {side}: 0 or "
                "a smaller loader.batch_size"
            )
    backend = config["backend"]
    workers = int(config["workers"])
    device = torch.device(device)
    if backend == "ffcv":
        sources = _ffcv_sources(files.beton, indices, batch_sizes, workers, seed, world_size)
    elif backend == "pytorch":
        paths = metadata["path"]
        sources = {
            side: TorchCrops(
                PillowCrops([paths[i] for i in eligible], side, max_side),
                batch_sizes[side],
                workers=workers,
                seed=seed,
                rank=rank,
                world_size=world_size,
                pin_memory=device.type == "cuda",
            )
            for side, eligible in indices.items()
        }
    else:
        raise LicError(f"loader.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    images_per_rank = math.ceil(len(indices[min(mix)]) / world_size)  # the smallest crop can use every image
    steps = max(1, round(images_per_rank / sum(mix[side] * batch_sizes[side] for side in mix)))
    augment = build_augment(config.get("augment") or [], seed=seed, rank=rank)
    return TrainLoader(
        sources,
        mix,
        steps,
        mix_from_step=mix_start_step(params),
        device=device,
        seed=seed,
        rank=rank,
        flip=bool(config["flip"]),
        augment=augment,
    )


def crop_plan(config: dict[str, Any]) -> tuple[dict[int, float], dict[int, int]]:
    """(share of batches, batch size) per crop size with a positive share, checked."""
    mix = {int(side): float(share) for side, share in config["crop_mix"].items()}
    if not mix or any(share < 0 for share in mix.values()) or not math.isclose(sum(mix.values()), 1.0):
        raise LicError(f"loader.crop_mix needs non-negative shares that add up to 1, got {config['crop_mix']}")
    mix = {side: share for side, share in mix.items() if share > 0}
    batch_sizes = {int(side): int(size) for side, size in config["batch_size"].items()}
    for side in mix:
        if batch_sizes.get(side, 0) < 1:
            raise LicError(f"loader.batch_size has no positive batch size for crop size {side}")
    return mix, {side: batch_sizes[side] for side in mix}


def _check_ranks(rank: int, world_size: int, seed: int) -> None:
    if seed < 0 or not 0 <= rank < world_size:
        raise LicError(f"need seed >= 0 and 0 <= rank < world_size, got seed {seed}, rank {rank} of {world_size}")
    if world_size > 1 and not (
        dist.is_available() and dist.is_initialized() and (dist.get_world_size(), dist.get_rank()) == (world_size, rank)
    ):
        raise LicError(f"world_size {world_size} needs torch.distributed initialised with that size, as rank {rank}")


def _ffcv_sources(
    beton: Path, indices: dict[int, np.ndarray], batch_sizes: dict[int, int], workers: int, seed: int, world: int
) -> dict[int, CropSource]:
    try:
        from lic.data.beton import FfcvCrops
    except ImportError as err:
        raise LicError(
            f"loader.backend is ffcv, but FFCV does not import ({err}); use loader.backend: pytorch"
        ) from None
    return {
        side: FfcvCrops(beton, side, batch_sizes[side], eligible, workers=workers, seed=seed, distributed=world > 1)
        for side, eligible in indices.items()
    }


class PillowCrops(Dataset):
    """Random side x side crops (uint8 S x S x 3) of image files, decoded with Pillow as the shard writer does."""

    def __init__(self, paths: Sequence[str], side: int, max_side: int) -> None:
        self.paths, self.side, self.max_side = list(paths), side, max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = read_pixels(self.paths[index], self.max_side)
        row = int(torch.randint(pixels.shape[0] - self.side + 1, ()))  # torch's generator: seeded per worker
        column = int(torch.randint(pixels.shape[1] - self.side + 1, ()))
        return torch.from_numpy(pixels[row : row + self.side, column : column + self.side].copy())


class TorchCrops:
    """The PyTorch backend's CropSource: a DataLoader over PillowCrops, each pass split between ranks."""

    def __init__(
        self, dataset: PillowCrops, batch_size: int, *, workers: int, seed: int, rank: int, world_size: int,
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

    def __len__(self) -> int:
        return len(self.loader)

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


def load_validation_images(params: dict[str, Any]) -> list[torch.Tensor]:
    """The held-out training images as 1 x 3 x H x W float32 in [0, 1]: decoded and capped as the shards store
    them, then centre-cropped to multiples of 64 and to at most `loader.validation_crop` per side (null: no cap)."""
    cap = params["loader"]["validation_crop"]
    max_side = int(params["shards"]["max_resolution"])
    images = []
    for path in _read_shard_table(ShardFiles.of(params).validation, MERGED_SCHEMA)["path"].to_pylist():
        pixels = read_pixels(path, max_side)
        height, width = (min(side, cap or side) // MODEL_STRIDE * MODEL_STRIDE for side in pixels.shape[:2])
        top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
        crop = torch.from_numpy(pixels[top : top + height, left : left + width].copy())
        images.append(crop.permute(2, 0, 1).unsqueeze(0).to(torch.float32, memory_format=torch.contiguous_format) / 255)
    return images


def _read_shard_table(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.exists():
        raise LicError(f"{path} not found: run `dvc repro shard` (or `lic data shard`) first")
    return read_manifest(path, schema)
