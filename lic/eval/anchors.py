"""Classical anchors measured live on the evaluation images: JPEG, WebP and AVIF through Pillow.

Published anchor curves were measured on other decoders, other colour conversions and sometimes other crops;
coding the same images here, through the same measurement loop as the learned codec, makes the comparison
like for like. Each codec is swept over its quality scale from the lowest setting to near-lossless (params:
evaluate.anchors), so its curve covers every rate it can reach; the report says where a model's rate range
falls outside it. Encoder options (also in params) are each encoder's slow, good-quality settings.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

from lic.errors import LicError
from lic.eval.evalset import EvalSet, load_eval_set
from lic.eval.measure import Decode, Encode, Measurement, measure_all, to_frame
from lic.io.atomic import atomic_path
from lic.params import Anchor, Params

ANCHORS_DIR, IMAGES = "anchors", "images.csv"  # the stage writes <evaluate.out_dir>/anchors/images.csv

PILLOW_FORMATS = {"jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp"), "avif": ("AVIF", "avif")}


def pillow_codec(name: str, quality: int, options: Mapping[str, Any]) -> tuple[Encode, Decode]:
    """encode/decode functions of one Pillow codec at one quality."""
    if name not in PILLOW_FORMATS:
        raise LicError(f"unknown anchor codec {name!r}; known: {', '.join(PILLOW_FORMATS)}")
    pillow_format, feature = PILLOW_FORMATS[name]
    if not features.check(feature):
        raise LicError(f"this Pillow build cannot write {name} (PIL.features.check({feature!r}) is False)")

    def encode(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, pillow_format, quality=quality, **options)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    return encode, decode


def measure_anchors(images: EvalSet, anchors: Mapping[str, Anchor]) -> list[Measurement]:
    """Every image at every quality of every anchor codec (params: evaluate.anchors)."""
    rows: list[Measurement] = []
    for name, settings in anchors.items():
        for quality in settings.qualities:
            encode, decode = pillow_codec(name, quality, settings.options)
            rows += measure_all(name, f"q{quality:03d}", encode, decode, images)
    return rows


def run_anchors(params: Params) -> Path:
    """The anchors stage: measure every anchor on the evaluation manifest, write <evaluate.out_dir>/anchors/."""
    images = load_eval_set(params.data.paths.eval)
    table = to_frame(measure_anchors(images, params.evaluate.anchors))
    out = Path(params.evaluate.out_dir) / ANCHORS_DIR / IMAGES
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return out
