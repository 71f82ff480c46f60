"""Regenerate the golden bitstream: `python -m tests.golden.make_golden` (from the project root).

Run it only when a change is *meant* to alter the coded bytes or the decoded pixels (a new bitstream or model
version): the golden test exists to catch every other such change. It writes, next to this file:
- `model.pt`: a tiny LoC-LIC (the real architecture at N = 8, 8, 16; M = 40; 2 slices) with seeded random
  weights, a few hundred KB, saved with its CDF tables like any checkpoint;
- `image.png`: a 96 x 64 photo crop (scikit-image's astronaut, shipped in its wheel);
- `image.lic`: what `lic.codec.encode` makes of it, and `decoded.png`: what `lic.codec.decode` gives back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from lic import codec
from lic.checkpoint import load_checkpoint, save_checkpoint
from lic.models import build

HERE = Path(__file__).resolve().parent
TINY = {"N": [8, 8, 16], "M": 40, "slices": 2}


def main() -> None:
    torch.manual_seed(2026)
    save_checkpoint(HERE / "model.pt", build("loclic", **TINY).eval())
    model, _ = load_checkpoint(HERE / "model.pt")  # exactly what the test loads
    pixels = np.ascontiguousarray(data.astronaut()[40:104, 180:276])
    Image.fromarray(pixels).save(HERE / "image.png")
    stream = codec.encode(pixels, model)
    (HERE / "image.lic").write_bytes(stream)
    codec.decode(stream, model).save(HERE / "decoded.png")
    print(f"{len(stream)} bytes, model.pt {(HERE / 'model.pt').stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
