"""Training loader throughput: FFCV against the PyTorch fallback on the same shards, 256 and 512 crops.

The shards hold the sample's training photographs (PNG stored raw, JPEG stored as JPEG, as the shard stage does),
each listed several times so that a pass has enough batches. Both backends get 2 workers (FFCV threads or
DataLoader processes) and deliver float32 batches in [0, 1] on the CPU through the same TrainLoader, flips on.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.common import Section, table
from lic.data.loader import build_train_loader
from lic.data.manifest import describe
from lic.data.schemas import MERGED_SCHEMA, write_table
from lic.data.shards import build_shards
from lic.data.sources.sample import _shipped_file
from lic.params import load_params

COPIES = 16  # of each photograph in the shards: 14 batches of 16 per pass at 256
WORKERS = 2
BATCH = {256: 16, 512: 4}
EPOCHS = 3  # timed, after one untimed epoch (numba compiles FFCV's pipeline in it; the OS caches the files)
ROOT = Path(__file__).resolve().parents[1]
HEADER = ["crop", "batch", "FFCV images/s", "PyTorch images/s", "FFCV / PyTorch", "FFCV first epoch s",
          "PyTorch first epoch s"]  # fmt: skip


def _shards(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params pointing at fresh shards of the sample photographs in `folder`, and the shard metrics."""
    params = load_params(ROOT / "params.yaml")
    rows = []
    for entry in params["data"]["sources"]["sample"]["train"]:
        path, _ = _shipped_file(entry)
        row = describe(str(path), None, 0, ())
        row.update(path=str(path), source="sample", split="train", license="", dedup="kept")
        rows += [row] * COPIES
    write_table(pa.Table.from_pylist(rows, schema=MERGED_SCHEMA), folder / "train.parquet")
    params["data"]["paths"]["train"] = str(folder / "train.parquet")
    params["shards"].update(dir=str(folder / "shards"), metrics=str(folder / "shards.json"), validation_images=0)
    params["shards"]["workers"] = WORKERS
    started = time.perf_counter()
    metrics = build_shards(params)
    metrics["write_s"] = time.perf_counter() - started
    return params, metrics


def _measure(params: dict[str, Any], backend: str, side: int) -> dict[str, float]:
    params = copy.deepcopy(params)
    params["loader"].update(backend=backend, crop_mix={side: 1.0}, batch_size=BATCH, workers=WORKERS)
    started = time.perf_counter()
    loader = build_train_loader(params)
    crops = sum(len(batch) for batch in loader.epoch(0))
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    for epoch in range(1, 1 + EPOCHS):
        for _ in loader.epoch(epoch):
            pass
    seconds = time.perf_counter() - started
    return {"first_epoch_s": first_s, "crops_per_epoch": crops, "images_per_s": crops * EPOCHS / seconds}


def run() -> Section:
    with tempfile.TemporaryDirectory() as folder:
        params, shards = _shards(Path(folder))
        results = {
            f"{backend} {side}": _measure(params, backend, side) for side in BATCH for backend in ("ffcv", "pytorch")
        }
    rows = []
    for side in BATCH:
        ffcv, torch_ = results[f"ffcv {side}"], results[f"pytorch {side}"]
        rows.append(
            [f"{side}x{side}", BATCH[side], f"{ffcv['images_per_s']:.0f}", f"{torch_['images_per_s']:.0f}",
             f"{ffcv['images_per_s'] / torch_['images_per_s']:.1f}x", f"{ffcv['first_epoch_s']:.1f}",
             f"{torch_['first_epoch_s']:.1f}"]
        )  # fmt: skip
    total = shards["total"]
    markdown = (
        f"Shards of the sample's {total['images'] // COPIES} training photographs, each {COPIES} times "
        f"({total['images']} images, {total['raw']} raw and {total['jpeg']} JPEG, {shards['beton_bytes'] / 2**20:.0f}"
        f" MiB; written in {shards['write_s']:.1f} s with {WORKERS} processes). 512 crops come from the "
        f"{total['crop_512']} images whose short side allows them. {WORKERS} workers each (FFCV threads, DataLoader "
        f"processes); images/s over {EPOCHS} epochs after a first one, whose time (with FFCV's numba compilation and "
        "the loader's construction) is shown apart.\n\n" + table(HEADER, rows)
    )
    return Section("Training loader", markdown, {"shards": shards, "loaders": results})
