"""The golden bitstream: a fixed-seed LoC-LIC codes a fixed photo to the same bytes and pixels, release after release.

Speed work on the coder (the halves of lic.models.halves, parameter nets and LocalContext on half the positions)
must not change a single bit. The reference was recorded before that work, with the official border rule of
checkpoint format 2. Float arithmetic is the same only on the same kind of CPU and torch build (see
lic.codec.determinism), so the test compares where those match the recording, and says why it skips elsewhere.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from lic import codec
from lic.models import build

RECORDED_ON = {"torch": "2.14.1+cu130", "cpu_capability": "AVX2"}
GOLDEN = {  # 384x256 astronaut, LoC-LIC seed 0 with g_a's last conv doubled (about 0.9 bpp)
    "bytes": 11098,
    "lic_sha256": "294d7593d6a28ecb44cdc7aadf802bedcd70b0a5fea52aec4cd52460b5a11251",
    "pixels_sha256": "f5da849ca9aa10503730ddf9bbe592beecf0d78ad17bcf831eee12b9bf62790b",
}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.skipif(_machine() != RECORDED_ON, reason=f"the golden stream was recorded with {RECORDED_ON}")
def test_the_golden_stream_is_unchanged() -> None:
    torch.manual_seed(0)
    model = build("loclic").eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(2.0)
    model.update(force=True)
    photo = Image.fromarray(data.astronaut()).resize((384, 256), Image.Resampling.LANCZOS)
    lic_bytes = codec.encode(photo, model)
    pixels = np.asarray(codec.decode(lic_bytes, model))
    assert len(lic_bytes) == GOLDEN["bytes"]
    assert hashlib.sha256(lic_bytes).hexdigest() == GOLDEN["lic_sha256"]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == GOLDEN["pixels_sha256"]


def test_the_halves_compute_every_convolution_bit_exactly() -> None:
    """What the golden stream rests on, shape by shape: a convolution split by output channels gives the
    same bits as the whole one, on one thread and on two."""
    from lic.models.halves import convolutions_in_halves, run_halves_concurrently, splittable

    torch.manual_seed(1)
    model = build("loclic", N=(16, 32, 64), M=64, slices=4).eval()
    convs = [m for m in model.modules() if splittable(m)]
    assert len(convs) > 50
    before = run_halves_concurrently(True)
    for concurrent in (True, False):
        run_halves_concurrently(concurrent)
        for conv in convs:
            x = torch.randn(1, conv.in_channels, 12, 20)
            with torch.inference_mode():
                whole = conv(x)
                with convolutions_in_halves(model):
                    halves = conv(x)
            assert torch.equal(whole, halves), conv
    run_halves_concurrently(before)
