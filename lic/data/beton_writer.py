"""Writing one .beton of the shard set without FFCV's writer hang.

FFCV's DatasetWriter waits forever when one of its worker processes dies: its progress loop counts samples that
will never arrive (stack-notes §1.2). So the writer runs in a child process that this one watches. A sample that
cannot be read, is not the uint8 H x W x 3 array the manifest promised, or does not fit a page records why before
its worker dies, which stops the run at once; a writer that stores no sample for `stall_timeout_s` is stopped too.
Either way the caller gets a LicError naming the cause, and the child's whole process tree is killed.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import cv2
import numpy as np
import psutil
from ffcv.fields import RGBImageField
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.writer import DatasetWriter

from lic.data.beton import IMAGE
from lic.data.rgb import is_jpeg, open_bytes, stored_pixels
from lic.errors import LicError


@dataclass(frozen=True)
class ShardSample:
    """One image to store: where it comes from (a file, or a member of a tar shard) and the size it is stored at.
    Whether it is stored as JPEG is decided from its bytes when it is written."""

    path: str
    member: str | None
    source: str
    width: int
    height: int

    @property
    def raw_bytes(self) -> int:
        return self.width * self.height * 3

    @property
    def location(self) -> str:
        return self.path if self.member is None else f"{self.path}/{self.member}"


FFCV_PAGE_SIZE = 4 * 2**21  # DatasetWriter's default, 8 MiB: one raw 2040 x 1404 DIV2K image (8.6 MB) exceeds it


def page_size_for(samples: Sequence[ShardSample]) -> int:
    """FFCV stores a sample within one page: the smallest power of two, at least FFCV's default, that holds the
    biggest image raw plus 1 MiB (a JPEG of a photograph at quality <= 95 is smaller than raw)."""
    need = max(sample.raw_bytes for sample in samples) + 2**20
    return max(FFCV_PAGE_SIZE, 1 << (need - 1).bit_length())


def check_pixels(pixels: object, sample: ShardSample) -> None:
    """Refuse anything but the uint8 H x W x 3 array of the size planned from the manifest."""
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3):
        kind = f"{pixels.dtype} array of shape {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels)
        raise LicError(f"not an 8-bit H x W x 3 image ({kind})")
    if pixels.shape[:2] != (sample.height, sample.width):
        raise LicError(
            f"decoded as {pixels.shape[1]}x{pixels.shape[0]}, expected {sample.width}x{sample.height} from the "
            "training manifest: did the file change after `dvc repro dedupe`?"
        )


def record_failure(errors: Path, message: str) -> None:
    """Tell the watching process why a worker is about to die (one line per failure)."""
    with open(errors, "a") as report:
        report.write(message.replace("\n", " ") + "\n")


class SourceFormatImageField(RGBImageField):
    """An RGBImageField whose storage is chosen per sample, which FFCV's write modes cannot do, and whose JPEGs keep
    full-resolution colour.

    A sample is (pixels, as_jpeg, path). FFCV's own JPEG mode halves the colour resolution (OpenCV's default 4:2:0):
    on the sample's 4:4:4 JPEGs that alone costs 10 dB (hubble_deep_field: 35.8 dB at quality 95, 45.3 dB at
    4:4:4), artefacts the codec would learn. Each stored sample advances `progress`; a failure to store one (a page
    too small, for instance) goes to `errors` first, since FFCV's writer would otherwise wait for it forever.
    """

    def __init__(self, jpeg_quality: int, progress: Synchronized, errors: Path) -> None:
        super().__init__(jpeg_quality=jpeg_quality)
        self.progress = progress
        self.errors = errors

    def encode(self, destination, sample: tuple[np.ndarray, bool, str], malloc) -> None:
        pixels, as_jpeg, path = sample
        try:
            data = _jpeg_444(pixels, self.jpeg_quality) if as_jpeg else np.ascontiguousarray(pixels).reshape(-1)
            destination["mode"] = IMAGE_MODES["jpg" if as_jpeg else "raw"]
            destination["height"], destination["width"] = pixels.shape[:2]
            destination["data_ptr"], storage = malloc(data.nbytes)
            storage[:] = data
        except MemoryError:  # FFCV's signal to retry the sample on a fresh page, not a failure
            raise
        except Exception as err:
            record_failure(self.errors, f"{path}: cannot store it ({type(err).__name__}: {err})")
            raise
        with self.progress.get_lock():
            self.progress.value += 1


def _jpeg_444(pixels: np.ndarray, quality: int) -> np.ndarray:
    sampling = [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    options = [cv2.IMWRITE_JPEG_QUALITY, quality, *sampling]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise ValueError("OpenCV could not encode it as JPEG")
    return data.reshape(-1)


class _Images:
    """The writer's indexed dataset: sample i is read, decoded and validated in the worker process that stores it;
    it is stored as JPEG when `jpeg` and its file is one (a lossless file is never re-encoded lossily)."""

    def __init__(self, samples: Sequence[ShardSample], max_side: int, jpeg: bool, errors: Path) -> None:
        self.samples, self.max_side, self.jpeg, self.errors = samples, max_side, jpeg, errors

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tuple[np.ndarray, bool, str]]:
        sample = self.samples[index]
        try:
            data = open_bytes(sample.path, sample.member)
            pixels = stored_pixels(data, self.max_side)
            check_pixels(pixels, sample)
        except Exception as err:
            record_failure(self.errors, f"{sample.location}: {err}")
            raise
        return ((pixels, self.jpeg and is_jpeg(data), sample.location),)


def write_beton(
    samples: Sequence[ShardSample],
    path: Path,
    *,
    max_side: int,
    jpeg_quality: int | None,
    workers: int,
    stall_timeout_s: float,
) -> int:
    """Write `samples` (in order) to the .beton at `path` with `workers` processes; return the page size used.
    JPEG files are stored as JPEG at `jpeg_quality`, everything else raw; None stores every image raw."""
    page_size = page_size_for(samples)
    context = multiprocessing.get_context("fork")  # as FFCV's own workers: nothing is pickled
    progress = context.Value("Q", 0)
    errors = path.with_name(f".{path.name}.errors")
    errors.unlink(missing_ok=True)
    resource_tracker.ensure_running()  # outside the writer's tree: frees the shared memory of a killed writer
    args = (samples, path, page_size, max_side, jpeg_quality, workers, progress, errors)
    writer = context.Process(target=_write, args=args, name="ffcv-writer")
    writer.start()
    try:
        _watch(writer, progress, errors, len(samples), stall_timeout_s)
    finally:
        _stop(writer)
        errors.unlink(missing_ok=True)
    return page_size


def _write(
    samples: Sequence[ShardSample],
    path: Path,
    page_size: int,
    max_side: int,
    jpeg_quality: int | None,
    workers: int,
    progress: Synchronized,
    errors: Path,
) -> None:
    """The writer process: FFCV's DatasetWriter and its `workers` worker processes."""
    field = SourceFormatImageField(int(jpeg_quality or 0), progress, errors)
    writer = DatasetWriter(str(path), {IMAGE: field}, page_size=page_size, num_workers=workers)
    chunk = max(1, min(100, len(samples) // (4 * workers)))  # small chunks spread a small dataset over the workers
    images = _Images(samples, max_side, jpeg_quality is not None, errors)
    writer.from_indexed_dataset(images, chunksize=chunk)


def _watch(writer: BaseProcess, progress: Synchronized, errors: Path, total: int, stall_timeout_s: float) -> None:
    stored, last_change = 0, time.monotonic()
    while writer.exitcode is None:
        writer.join(0.1)
        if failure := _first_failure(errors):
            raise LicError(f"shard writer stopped: {failure}")
        if progress.value != stored:
            stored, last_change = progress.value, time.monotonic()
        elif time.monotonic() - last_change > stall_timeout_s:
            raise LicError(
                f"the FFCV writer stored no image for {stall_timeout_s:g} s ({stored} of {total} stored), "
                "so it was stopped (shards.stall_timeout_s)"
            )
    if writer.exitcode != 0 or _first_failure(errors):
        raise LicError(f"shard writer failed: {_first_failure(errors) or f'exit code {writer.exitcode}'}")


def _first_failure(errors: Path) -> str:
    try:
        return errors.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return ""


def _stop(writer: BaseProcess) -> None:
    """Kill the writer and its FFCV workers if they are still running (a hung writer never ends by itself)."""
    if writer.exitcode is None:
        try:
            for child in psutil.Process(writer.pid).children(recursive=True):
                child.kill()
        except psutil.NoSuchProcess:
            pass
        writer.kill()
    writer.join()
