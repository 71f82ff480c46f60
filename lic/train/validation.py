"""Validation during training: rate, quality and RD loss on held-out images, by the likelihood estimate.

The held-out images are the shard set's validation shards (`data/shards/validation-*.beton`), so training reads
nothing but the shard set; they are the pixels the shards store (a JPEG sample decoded exactly).

An eval-mode forward pass reconstructs what the real codec decodes (bit-exactly under the codec's arithmetic,
lic.models.halves; here, on the training threads, to float rounding) and its likelihoods give the rate to
within about 1% (docs/model.md), at a fraction of the cost of entropy coding. Images are padded to a multiple of
64, as the codec needs (centred zero padding, CompressAI's convention), and the rate is over the unpadded
pixels. Quality follows the evaluation stage's convention (lic.eval.metrics): the reconstruction rounded to 8
bits, PSNR with peak 255, MS-SSIM at data range 255. The loss is the training objective on the unpadded,
clamped reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from torch import Tensor, nn

from lic.codec.core import PAD_MULTIPLE
from lic.data.shards import VALIDATION, ShardFiles
from lic.eval.metrics import ms_ssim, psnr
from lic.params import Loader, Shards
from lic.train.objective import RateDistortionLoss


@torch.no_grad()
def validate(model: nn.Module, images: Sequence[Tensor], criterion: RateDistortionLoss) -> dict[str, float]:
    """Mean loss, bpp, PSNR and MS-SSIM over `images` (each 1 x 3 x H x W in [0, 1], on the model's device)."""
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0, "ms_ssim": 0.0}
    for x in images:
        height, width = x.shape[-2:]
        pad, unpad = compute_padding(height, width, min_div=PAD_MULTIPLE)
        output = model(F.pad(x, pad))
        x_hat = F.pad(output["x_hat"], unpad).clamp(0, 1)
        losses = criterion({"x_hat": x_hat, "likelihoods": output["likelihoods"]}, x)
        original, decoded = _uint8(x), _uint8(x_hat)
        totals["loss"] += losses["loss"].item()
        totals["bpp"] += losses["bpp_loss"].item()
        totals["psnr"] += psnr(original, decoded)
        totals["ms_ssim"] += ms_ssim(original, decoded)
    model.train(was_training)
    return {name: total / len(images) for name, total in totals.items()}


def _uint8(x: Tensor) -> np.ndarray:
    return x[0].mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


def load_validation_images(config: Loader, shard_set: Shards) -> list[Tensor]:
    """The held-out images as 1 x 3 x H x W float32 in [0, 1], in index order: centre-cropped to multiples of
    the padding multiple and to at most `loader.validation_crop` per side (null: no cap)."""
    from lic.data.beton import StoredSamples

    cap = config.validation_crop
    files = ShardFiles.of(shard_set)
    index = files.read_index()
    held_out = index.filter(pc.equal(index["split"], VALIDATION))
    opened: dict[str, StoredSamples] = {}
    images = []
    for file, row in zip(held_out["file"].to_pylist(), held_out["row"].to_pylist(), strict=True):
        if file not in opened:
            opened[file] = StoredSamples(files.directory / file)
        pixels = opened[file].pixels(row)
        height, width = (min(side, cap or side) // PAD_MULTIPLE * PAD_MULTIPLE for side in pixels.shape[:2])
        top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
        crop = torch.from_numpy(pixels[top : top + height, left : left + width].copy())
        images.append(crop.permute(2, 0, 1).unsqueeze(0).to(torch.float32, memory_format=torch.contiguous_format) / 255)
    return images
