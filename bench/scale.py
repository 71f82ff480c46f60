"""`python -m bench.scale --images N [--json]`: the data stages (manifest -> dedupe -> shard) on a synthetic corpus
of N photo-like images on a local Ray, with planted duplicates; and `--search N`: the near-duplicate search alone
on N random hashes.

The corpus has the real training sources' shares, sizes and formats (ImageNet ~87 %: JPEG about 500x375; COCO
~8 %: JPEG 640x480; Vimeo-90K ~4 %: PNG 448x256; DIV2K: PNG 2040x1356, at least one) and the evaluation sets
(Kodak: 24 PNG 768x512; CLIC: 41 PNG 2048x1365), packed as fetch packs them (tar shards of training images,
loose evaluation files). Images are smooth random colour fields with photographic noise, so each has its own
perceptual hash and files of photographic size. Planted: 1 % exact copies (the same bytes in another shard or
source), 1 % near copies (resized to 90 %, re-encoded as JPEG 70, or cropped by 3 % a side) and 0.2 % leaked
evaluation images (resized or re-encoded). Each perceptual search is scored on its own: recall is the share of its
planted copies that dedupe removes for that reason (a copy the manifest skips, below data.min_side, never reaches
dedupe and is not counted), precision the share of the images it removes that were planted; the leakage search's
threshold is looser than the near-duplicate one's on purpose, so it may take a distinct image for a leak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
from PIL import Image

from lic.data.schemas import location
from lic.params import Params, load_params

ROOT = Path(__file__).resolve().parents[1]
# source -> (share of training images, format, (width, height)); the paper's corpus is 1.47 M training images
TRAIN_SOURCES = {
    "imagenet": (1_281_167 / 1_469_966, "JPEG", (500, 375)),
    "coco": (123_287 / 1_469_966, "JPEG", (640, 480)),
    "vimeo": (64_612 / 1_469_966, "PNG", (448, 256)),
    "div2k": (900 / 1_469_966, "PNG", (2040, 1356)),
}
EVAL_SOURCES = {"kodak": (24, (768, 512)), "clic": (41, (2048, 1365))}
PER_SHARD = 500  # images per tar shard: several partitions even at small N
EXACT_SHARE, NEAR_SHARE, LEAK_SHARE = 0.01, 0.01, 0.002
STAGES = ("manifest", "dedupe", "shard")


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 H x W x 3: a random 12x12 colour field, upscaled smoothly, plus sensor-like noise (distinct images
    measured 14-40 bits apart in perceptual hash, their near copies 0-8)."""
    import cv2

    coarse = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noise = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def near_copy(data: bytes, kind: int) -> bytes:
    """A near duplicate of an encoded image: resized to 90 %, re-encoded as JPEG 70, or cropped by 3 % a side."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    if kind == 0:
        image = image.resize((int(width * 0.9), int(height * 0.9)), Image.BILINEAR)
    elif kind == 2:
        dx, dy = round(width * 0.03), round(height * 0.03)
        image = image.crop((dx, dy, width - dx, height - dy))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70 if kind == 1 else 92)
    return buffer.getvalue()


def _write_shard(task: tuple[str, int, int, int, int]) -> None:
    """One tar shard of distinct images (`count` of them, image numbers from `first`)."""
    folder, shard, first, count, seed = task
    name = Path(folder).name
    _, fmt, (width, height) = TRAIN_SOURCES[name]
    rng = np.random.default_rng(seed)
    with tarfile.open(Path(folder) / f"train-{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for number in range(first, first + count):
            w = int(width * rng.uniform(0.8, 1.0)) if name == "imagenet" else width
            h = int(height * rng.uniform(0.8, 1.0)) if name == "imagenet" else height
            _add(tar, f"{name}/{number:08d}.{fmt.lower()}", encode(photo(rng, w, h), fmt))


def _add(tar: tarfile.TarFile, member: str, data: bytes) -> None:
    info = tarfile.TarInfo(member)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_corpus(raw: Path, images: int, workers: int) -> dict[str, set[str]]:
    """Write data/raw/<source>/ for every source; return the planted copies by kind (as path/member locations)."""
    counts = {name: max(1, round(images * share)) for name, (share, _, _) in TRAIN_SOURCES.items()}
    counts["imagenet"] += images - sum(counts.values())
    planted = max(1, int(images * EXACT_SHARE)), max(1, int(images * NEAR_SHARE)), max(1, int(images * LEAK_SHARE))
    distinct = {name: count - (sum(planted) if name == "imagenet" else 0) for name, count in counts.items()}
    tasks = []
    for name, count in distinct.items():
        (raw / name).mkdir(parents=True)
        for shard, first in enumerate(range(0, count, PER_SHARD)):
            tasks.append(
                (str(raw / name), shard, first, min(PER_SHARD, count - first), zlib.crc32(f"{name}{shard}".encode()))
            )
    for name, (count, (width, height)) in EVAL_SOURCES.items():
        (raw / name / "eval").mkdir(parents=True)
        rng = np.random.default_rng(len(name))
        for k in range(count):
            (raw / name / "eval" / f"{name}{k:02d}.png").write_bytes(encode(photo(rng, width, height), "PNG"))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_shard, tasks))
    for name in [*TRAIN_SOURCES, *EVAL_SOURCES]:
        (raw / name / "source.json").write_text(json.dumps({"active": True, "license": "synthetic", "licenses": {}}))
    return _plant(raw, distinct, planted)


def _plant(raw: Path, distinct: dict[str, int], planted: tuple[int, int, int]) -> dict[str, set[str]]:
    """One more ImageNet shard of copies: exact ones of random images of every source, near ones, leaks."""
    rng = np.random.default_rng(7)
    exact, near, leak = planted
    shards = {name: sorted((raw / name).glob("train-*.tar")) for name in TRAIN_SOURCES}
    # exact copies of every source (across sources), near copies of ImageNet images (a resized Vimeo frame would be
    # below data.min_side and skipped, not deduplicated)
    originals = [(name, int(i)) for name, count in distinct.items() for i in rng.choice(count, size=min(count, 2))]
    originals = originals[:exact]
    chosen = rng.choice(distinct["imagenet"], size=exact + near - len(originals), replace=False)
    originals += [("imagenet", int(i)) for i in chosen]
    kinds: dict[str, set] = {"exact": set(), "near": set(), "leak": set(), "pairs": set()}
    copies_path = raw / "imagenet" / f"train-{len(shards['imagenet']):05d}.tar"
    with tarfile.open(copies_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for k, (name, number) in enumerate(originals):
            shard = shards[name][number // PER_SHARD]
            member = f"{name}/{number:08d}.{TRAIN_SOURCES[name][1].lower()}"
            with tarfile.open(shard) as source:
                data = source.extractfile(member).read()
            kind = "exact" if k < exact else "near"
            copy = data if kind == "exact" else near_copy(data, k % 3)
            copy_member = f"copies/{kind}{k:06d}.{'jpeg' if kind == 'near' else member.rsplit('.', 1)[1]}"
            _add(tar, copy_member, copy)
            kinds[kind].add(f"{copies_path.as_posix()}/{copy_member}")
            kinds["pairs"].add((f"{copies_path.as_posix()}/{copy_member}", f"{shard.as_posix()}/{member}"))
        evaluation = sorted((raw / "kodak" / "eval").glob("*.png")) + sorted((raw / "clic" / "eval").glob("*.png"))
        for k in range(leak):
            copy_member = f"copies/leak{k:06d}.jpeg"
            _add(tar, copy_member, near_copy(evaluation[k % len(evaluation)].read_bytes(), k % 2))
            kinds["leak"].add(f"{copies_path.as_posix()}/{copy_member}")
    return kinds


class PeakMemory:
    """Peak resident memory of this process (VmHWM, reset at the start) and of the largest Ray worker, sampled."""

    def __init__(self) -> None:
        self.worker_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def driver_mib(self) -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
                try:
                    title = " ".join(process.info["cmdline"] or [])
                    if title.startswith("ray::") and "IDLE" not in title and process.info["memory_info"]:
                        self.worker_peak = max(self.worker_peak, process.info["memory_info"].rss)
                except psutil.Error:
                    continue


def bench_params(work: Path, images: int) -> Params:
    """The project's params with every data path under `work` and a `bench` profile of the synthetic sources."""
    paths = load_params(ROOT / "params.yaml", env={}).data.paths
    overrides: dict[str, Any] = {
        f"data.paths.{key}": str(work / key) for key in ("raw", "partitions", "source_manifests")
    }
    for key in ("merged", "train", "eval", "metrics", "report"):
        overrides[f"data.paths.{key}"] = str(work / Path(getattr(paths, key)).name)
    overrides |= {
        "data.profiles.bench": [*TRAIN_SOURCES, *EVAL_SOURCES],
        "profile": "bench",
        "shards.dir": str(work / "shards"),
        "shards.metrics": str(work / "shards.json"),
        "shards.validation_images": 2,
        "shards.shard_size_mb": max(8, images // 400),  # at least a few shards per CPU
    }
    return load_params(ROOT / "params.yaml", overrides, env={})


def run_stages(images: int, work: Path) -> dict[str, Any]:
    from lic.data.dedupe import run_dedupe
    from lic.data.engine import ray_session
    from lic.data.manifest import build_manifest
    from lic.data.shards import build_shards

    params = bench_params(work, images)
    started = time.perf_counter()
    planted = build_corpus(Path(params.data.paths.raw), images, workers=len(os.sched_getaffinity(0)))
    corpus_s = time.perf_counter() - started
    stages = {}
    with ray_session():
        steps = {
            "manifest": lambda: [build_manifest(params, source) for source in params.active_sources],
            "dedupe": lambda: run_dedupe(params),
            "shard": lambda: build_shards(params),
        }
        for stage, step in steps.items():
            with PeakMemory() as memory:
                started = time.perf_counter()
                step()
                seconds = time.perf_counter() - started
            stages[stage] = {
                "seconds": round(seconds, 2),
                "images_per_s": round(images / seconds, 1),
                "peak_rss_mib": round(memory.driver_mib, 1),
                "worker_peak_rss_mib": round(memory.worker_peak / 2**20, 1),
            }
    return {"images": images, "corpus_s": corpus_s, "stages": stages, **_quality(params, planted)}


def _quality(params: Params, planted: dict[str, set[str]]) -> dict[str, Any]:
    """Recall and precision of each perceptual search: planted near copies among training images (within
    near_threshold) and planted leaks of evaluation images (within the looser leakage_threshold); exact copies found."""
    merged = pq.read_table(params.data.paths.merged, columns=["path", "member", "dedup"])
    verdict = dict(zip(location(merged).to_pylist(), merged["dedup"].to_pylist(), strict=True))
    scores = {}
    for key, kind, copies in (("near_duplicates", "near duplicate", "near"), ("leakage", "leakage", "leak")):
        reached = {where for where in planted[copies] if verdict.get(where) is not None}  # not skipped by manifest
        flagged = {where for where, said in verdict.items() if said == kind}
        scores[key] = {
            "recall": round(len(reached & flagged) / len(reached), 4),
            "precision": round(len(flagged & reached) / len(flagged), 4) if flagged else 1.0,
            "distinct_flagged": len(flagged - reached),
        }
    return {
        **scores,
        "exact_duplicates_found": sum(  # the copy or its original, whichever the keep preference drops
            "exact duplicate" in (verdict.get(copy), verdict.get(original))
            for copy, original in planted["pairs"]
            if copy in planted["exact"]
        ),
        "exact_duplicates_planted": len(planted["exact"]),
    }


def run_search(hashes: int, nprobe: int | None = None) -> dict[str, Any]:
    """The dedupe stage's near-duplicate search alone: `hashes` random 64-bit hashes with two zooms each, 1 %
    planted copies 0-8 bits off, at data.dedupe.search's settings (IVF beyond exact_max; `nprobe` overrides)."""
    from lic.data.neighbours import Hashes, SearchPlan, near_pairs

    dedupe = load_params(ROOT / "params.yaml", env={}).data.dedupe
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, size=(hashes, 8), dtype=np.uint8)
    copies = hashes // 100
    originals = rng.choice(hashes - copies, size=copies, replace=False)
    bits = np.unpackbits(full[originals], axis=1)
    for row in range(copies):
        bits[row, rng.choice(64, size=int(rng.integers(0, 9)), replace=False)] ^= 1
    full[hashes - copies :] = np.packbits(bits, axis=1)
    zooms = tuple(full ^ rng.integers(0, 256, size=(hashes, 8), dtype=np.uint8) for _ in range(2))  # unrelated
    plan = SearchPlan.of(dedupe.search.model_copy(update={"nprobe": nprobe} if nprobe else {}))
    with PeakMemory() as memory:
        started = time.perf_counter()
        i, j, _ = near_pairs(Hashes(full, zooms), None, dedupe.near_threshold, plan)
        seconds = time.perf_counter() - started
    wanted = set(zip(originals.tolist(), range(hashes - copies, hashes), strict=True))
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    return {
        "hashes": hashes,
        "seconds": round(seconds, 2),
        "planted_recall": round(len(wanted & found) / len(wanted), 4),
        "pairs": len(found),
        "exact": plan.is_exact(hashes),
        "nprobe": plan.nprobe,
        "peak_rss_mib": round(memory.driver_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="corpus size for manifest -> dedupe -> shard")
    parser.add_argument("--search", type=int, help="time only the near-duplicate search on this many hashes")
    parser.add_argument("--nprobe", type=int, help="with --search: IVF cells visited per query (default: params)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", type=Path, help="build the corpus here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if args.search:
        result = run_search(args.search, args.nprobe)
        print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
        return
    if not args.images or args.images < 100:
        parser.error("--images N needs N >= 100 (or use --search N)")
    if args.keep:
        args.keep.mkdir(parents=True)  # refuses a folder that exists: a corpus is built once per folder
        result = run_stages(args.images, args.keep)
    else:
        with tempfile.TemporaryDirectory() as folder:
            result = run_stages(args.images, Path(folder))
    if args.json:
        stages = {
            name: {key: stage[key] for key in ("seconds", "images_per_s", "peak_rss_mib")}
            for name, stage in result["stages"].items()
        }  # the object issue 15 specifies; the workers' peak is in the table
        searches = {key: result[key] for key in ("near_duplicates", "leakage")}
        print(json.dumps({"images": args.images, "stages": stages, **searches}))
        return
    print(f"{args.images} images (corpus built in {result['corpus_s']:.0f} s)")
    print(f"{'stage':<10}{'seconds':>10}{'images/s':>12}{'driver MiB':>12}{'worker MiB':>12}")
    for name, stage in result["stages"].items():
        print(f"{name:<10}{stage['seconds']:>10.1f}{stage['images_per_s']:>12.1f}{stage['peak_rss_mib']:>12.0f}"
              f"{stage['worker_peak_rss_mib']:>12.0f}")  # fmt: skip
    for key, what in (("near_duplicates", "near copies"), ("leakage", "leaked evaluation images")):
        score = result[key]
        print(f"planted {what}: recall {score['recall']}, precision {score['precision']} "
              f"({score['distinct_flagged']} distinct images flagged)")  # fmt: skip
    print(f"exact copies found {result['exact_duplicates_found']} of {result['exact_duplicates_planted']}")


if __name__ == "__main__":
    main()
