"""The training loader over shards of coded images (every crop says which image and which pixels it holds): the
crop-size schedule, native-resolution crops from both backends, a subset of the shards, two gloo ranks splitting
each pass, validation images from the validation shard, and user errors.

Run as a script, this file is one rank of the two-rank test: `python -m tests.test_loader RANK WORLD PORT PARAMS OUT`.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from lic.data.loader import TrainLoader, build_train_loader
from lic.data.shards import build_shards
from lic.errors import LicError
from lic.params import parse_params
from lic.train.validation import load_validation_images
from tests.data_support import ROOT, tool_env
from tests.shard_support import coded_image, shard_params, write_training_manifest

# (width, height) of image i: even ones allow 512 crops, odd ones only 256
SIZES = [(600, 530) if i % 2 == 0 else (300 + 10 * i, 270) for i in range(18)]
BATCH = {256: 2, 512: 2}


def _coded_shards(root: Path, shard_size_mb: float) -> dict:
    """Shards of 18 coded PNGs, 2 of them held out; returns the params that point at them."""
    paths = []
    for index, (width, height) in enumerate(SIZES):
        paths.append(root / f"coded{index:02d}.png")
        Image.fromarray(coded_image(index, width, height)).save(paths[-1], compress_level=1)
    write_training_manifest(root / "train.parquet", paths)
    params = shard_params(root, validation_images=2, shard_size_mb=shard_size_mb)
    build_shards(parse_params(params))
    # one thread: numba compiles the serial pipeline faster, and test_shards covers two threads
    params["loader"].update(crop_mix={256: 0.5, 512: 0.5}, batch_size=BATCH, workers=1)
    return params


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two train shards (about 10 MB of images in 5 MB shards) and the validation shard."""
    params = _coded_shards(tmp_path_factory.mktemp("loader"), shard_size_mb=5)
    assert shard_images(params).keys() == {0, 1}
    return params


@pytest.fixture(scope="module")
def ffcv_loader(shards: dict) -> TrainLoader:
    """One FFCV loader for the module: its first epoch pays numba's compilation."""
    return loader_of(shards, seed=1)


def index_rows(params: dict) -> list[dict]:
    return pq.read_table(Path(params["shards"]["dir"]) / "index.parquet").to_pylist()


def loader_of(raw: dict, **options: object) -> TrainLoader:
    """The training loader of a params mapping (validated as load_params would)."""
    params = parse_params(raw)
    return build_train_loader(params.loader, params.shards, **options)


def validation_paths(params: dict) -> list[str]:
    return [row["path"] for row in index_rows(params) if row["split"] == "validation"]


def shard_images(params: dict) -> dict[int, set[int]]:
    """The coded images each train shard holds."""
    shards: dict[int, set[int]] = {}
    for row in index_rows(params):
        if row["split"] == "train":
            shards.setdefault(row["shard"], set()).add(int(Path(row["path"]).stem[-2:]))
    return shards


def held_out(params: dict) -> set[int]:
    """The coded images held out for validation (picked by content hash)."""
    return {int(Path(path).stem[-2:]) for path in validation_paths(params)}


def image_ids(batch: torch.Tensor) -> list[int]:
    """Which coded image each crop of a batch comes from (its blue channel)."""
    return [round(float(v) * 255) for v in batch[:, 2, 0, 0]]


def check_batch(batch: torch.Tensor, side: int) -> str:
    """A float32 B x 3 x S x S batch in [0, 1] whose crops are native-resolution pixels of one image each, maybe
    mirrored; returns 'mirrored' or 'as is' for the first crop."""
    assert batch.shape == (BATCH[side], 3, side, side) and batch.dtype == torch.float32 and batch.is_contiguous()
    assert batch.min() >= 0 and batch.max() <= 1
    pixels = (batch * 255).round().to(torch.int64)
    directions = []
    for crop in pixels:
        rows, columns, ids = crop
        assert torch.all((rows[1:] - rows[:-1]) % 256 == 1)  # consecutive rows: cropped, never resized
        steps = (columns[:, 1:] - columns[:, :-1]) % 256
        assert torch.all(steps == 1) or torch.all(steps == 255)  # consecutive columns, or mirrored
        assert torch.all(ids == ids[0, 0])
        directions.append("as is" if steps[0, 0] == 1 else "mirrored")
    return directions[0]


def test_ffcv_batches_are_native_crops_in_the_scheduled_sizes(ffcv_loader: TrainLoader, shards: dict) -> None:
    assert ffcv_loader.crop_sizes == (256, 512)
    assert len(ffcv_loader) == 8  # 16 images / (0.5 * 2 + 0.5 * 2) crops per step
    directions, seen = Counter(), Counter()
    for epoch in range(3):
        sizes = []
        for batch in ffcv_loader.epoch(epoch):
            sizes.append(batch.shape[-1])
            directions[check_batch(batch, batch.shape[-1])] += 1
            seen.update((batch.shape[-1], i) for i in image_ids(batch))
        assert sizes == ffcv_loader.schedule(epoch)
    assert set(directions) == {"as is", "mirrored"}
    assert not {i for _, i in seen} & held_out(shards)
    assert all(i % 2 == 0 for side, i in seen if side == 512)  # only images with a short side >= 512


def test_pytorch_fallback_gives_the_same_kind_of_batches(ffcv_loader: TrainLoader, shards: dict) -> None:
    params = copy.deepcopy(shards)
    params["loader"].update(backend="pytorch", workers=1)
    loader = loader_of(params, seed=1)
    assert (loader.crop_sizes, len(loader), loader.schedule(0)) == (
        ffcv_loader.crop_sizes, len(ffcv_loader), ffcv_loader.schedule(0)
    )  # fmt: skip
    for batch, side in zip(loader.epoch(0), loader.schedule(0), strict=True):
        check_batch(batch, side)
        assert not set(image_ids(batch)) & held_out(shards)


def test_a_subset_of_shards_yields_only_its_images_in_the_same_mix_and_range(shards: dict) -> None:
    """What a rank of a multi-node run reads: shards=[1] gives shard 1's images only, with the schedule (seed,
    epoch), the mix and the value range of the loader over every shard."""
    first = shard_images(shards)[1]
    subset = loader_of(shards, seed=1, shards=[1])
    whole = loader_of(shards, seed=1)
    assert len(subset) == len(whole)  # an epoch is counted over all train shards: every rank runs the same steps
    seen = Counter()
    for epoch in range(2):
        sizes = []
        for batch in subset.epoch(epoch):
            sizes.append(batch.shape[-1])
            check_batch(batch, batch.shape[-1])
            seen.update((batch.shape[-1], i) for i in image_ids(batch))
        assert sizes == whole.schedule(epoch)
    assert seen and {i for _, i in seen} <= first
    assert all(i % 2 == 0 for side, i in seen if side == 512)
    torch_subset = copy.deepcopy(shards)
    torch_subset["loader"].update(backend="pytorch", workers=0)
    batches = list(loader_of(torch_subset, seed=1, shards=[1]).epoch(0))
    assert {i for batch in batches for i in image_ids(batch)} <= first
    with pytest.raises(LicError, match=r"shards=\[5\]: the shard set has train shards 0-1, not \[5\]"):
        loader_of(shards, shards=[5])


def test_albumentations_transforms_apply_to_both_backends_alike(shards: dict) -> None:
    params = copy.deepcopy(shards)
    params["loader"].update(backend="pytorch", workers=0, flip=False, augment=[{"VerticalFlip": {"p": 1.0}}])
    batch = next(loader_of(params).epoch(0))
    rows = (batch[0, 0] * 255).round().to(torch.int64)
    assert torch.all((rows[:-1] - rows[1:]) % 256 == 1)  # upside down
    params["loader"]["augment"] = [{"NoSuchTransform": {}}]
    with pytest.raises(LicError, match="albumentations has no transform 'NoSuchTransform'"):
        loader_of(params)


def test_validation_images_are_the_held_out_ones_cropped_to_multiples_of_64(shards: dict) -> None:
    images = load_validation_images(parse_params(shards).loader, parse_params(shards).shards)
    assert len(images) == 2
    for image, path in zip(images, validation_paths(shards), strict=True):
        index = int(Path(path).stem[-2:])
        width, height = SIZES[index]
        assert image.shape == (1, 3, min(height, 512) // 64 * 64, min(width, 512) // 64 * 64)
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        assert torch.all((image[0, 2] * 255).round() == index)


def test_bad_settings_are_user_errors(shards: dict) -> None:
    def fails(match: str, seed: int = 0, world_size: int = 1, **loader: object) -> None:
        params = copy.deepcopy(shards)
        params["loader"].update(loader)
        with pytest.raises(LicError, match=match):
            loader_of(params, seed=seed, world_size=world_size)

    fails("loader.crop_mix .*add up to 1", crop_mix={256: 0.5, 512: 0.6})
    fails("loader.batch_size .*no positive batch size for crop size 384", crop_mix={256: 0.5, 384: 0.5})
    fails(
        r"\d training images of the chosen shards allow a 512x512 crop, but a batch of 10", batch_size={256: 2, 512: 10}
    )
    fails("loader.backend = 'dali': Input should be 'ffcv' or 'pytorch'", backend="dali")
    fails("needs torch.distributed initialised", world_size=2)
    fails("need seed >= 0", seed=-1)
    missing = copy.deepcopy(shards)
    missing["shards"]["dir"] = "/nonexistent/shards"
    with pytest.raises(LicError, match="run `dvc repro shard`"):
        loader_of(missing)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration  # a real gloo process group: a TCP store on 127.0.0.1 and two rank processes
@pytest.mark.timeout(300)
def test_two_gloo_ranks_split_every_pass_and_together_cover_it(tmp_path: Path) -> None:
    """Two processes, torch.distributed with gloo, the FFCV backend: per epoch each rank gets half the images.
    One shard: with several, FFCV pads each shard's pass to a multiple of the ranks (an image may come twice)."""
    shards = _coded_shards(tmp_path, shard_size_mb=100)
    params = copy.deepcopy(shards)
    params["loader"].update(crop_mix={256: 1.0, 512: 0.0}, workers=1)  # one pass per epoch: 16 images, 2 x 4 x 2
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    port = str(_free_port())
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.test_loader",
                str(rank),
                "2",
                port,
                str(params_path),
                str(tmp_path / f"{rank}.json"),
            ],
            env=tool_env(),
            cwd=ROOT,
        )
        for rank in range(2)
    ]
    assert [rank.wait(timeout=280) for rank in ranks] == [0, 0]
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["steps"] == results[1]["steps"] == 4
    training = set(range(len(SIZES))) - held_out(shards)
    for epoch in range(2):
        first, second = (Counter(result["ids"][epoch]) for result in results)
        assert max(first.values()) == max(second.values()) == 1
        assert not set(first) & set(second)
        assert set(first) | set(second) == training
    assert results[0]["ids"][0] != results[0]["ids"][1]  # every epoch splits the images anew


def _rank_main(rank: int, world_size: int, port: str, params_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loader = loader_of(yaml.safe_load(Path(params_path).read_text()), rank=rank, world_size=world_size)
        ids = [[i for batch in loader.epoch(epoch) for i in image_ids(batch)] for epoch in range(2)]
        Path(out).write_text(json.dumps({"steps": len(loader), "ids": ids}))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])
