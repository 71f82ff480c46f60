"""One measurement loop for every codec, learned or classical: code each image to bytes and back, and score it.

A codec here is a pair of functions, `encode(pixels) -> bytes` and `decode(bytes) -> pixels`, so LoC-LIC and the
Pillow anchors are measured by the same code and their numbers differ only by what the codecs do. Rows are the
per-image table (CSV); `curve_points` averages them per codec, setting and dataset, the CompressAI convention
(the mean of per-image bpp, PSNR and MS-SSIM).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from lic.codec import bits_per_pixel
from lic.eval.evalset import EvalImage, EvalSet
from lic.eval.metrics import ms_ssim, psnr
from lic.io.progress import counting

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]
METRICS = ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")
CURVE_KEYS = ["codec", "setting", "dataset"]


@dataclass(frozen=True)
class Measurement:
    codec: str  # e.g. loclic-mse, jpeg
    setting: str  # the rate point: a lambda key or a quality
    dataset: str
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float


def measure_image(codec: str, setting: str, encode: Encode, decode: Decode, image: EvalImage) -> Measurement:
    """Code one image for real and score the decoded 8-bit result against the original."""
    original = image.pixels()
    started = time.perf_counter()
    data = encode(original)
    encoded = time.perf_counter()
    decoded = decode(data)
    decode_s = time.perf_counter() - encoded
    height, width = original.shape[:2]
    return Measurement(
        codec=codec,
        setting=setting,
        dataset=image.dataset,
        image=image.path,
        width=width,
        height=height,
        bytes=len(data),
        bpp=bits_per_pixel(len(data), height, width),
        psnr=psnr(original, decoded),
        ms_ssim=ms_ssim(original, decoded),
        encode_s=encoded - started,
        decode_s=decode_s,
    )


def measure_all(codec: str, setting: str, encode: Encode, decode: Decode, images: EvalSet) -> list[Measurement]:
    """Measure every image, with a progress bar on stderr."""
    rows = []
    with counting() as bar:
        task = bar.add_task(f"{codec} {setting}", total=len(images))
        for image in images:
            rows.append(measure_image(codec, setting, encode, decode, image))
            bar.advance(task)
    return rows


def to_frame(rows: Iterable[Measurement]) -> pd.DataFrame:
    return pd.DataFrame([asdict(row) for row in rows], columns=list(Measurement.__dataclass_fields__))


def curve_points(table: pd.DataFrame) -> pd.DataFrame:
    """Mean bpp, PSNR, MS-SSIM and timings per (codec, setting, dataset), with the image count."""
    grouped = table.groupby(CURVE_KEYS, sort=True)
    points = grouped[list(METRICS)].mean()
    points["images"] = grouped.size()
    return points.reset_index()
