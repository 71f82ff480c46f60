"""The golden bitstream: a committed model and .lic that must keep decoding to the committed pixels, bit for bit,
and the committed image must keep encoding to the committed bytes. A change to the container format, the entropy
coding, the model's math (say, LocalContext's mask) or a speed-up that is not exact fails here; when such a change
is meant, bump the versions it concerns and run `python -m tests.golden.make_golden`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lic import codec
from tests.golden.make_golden import HERE, golden_model, parameters_digest


@pytest.fixture(scope="module")
def model():
    return golden_model()


def test_the_golden_model_is_the_one_the_stream_was_made_with(model) -> None:
    """Fails when the generated parameters change (the generator, the architecture's parameter names or shapes):
    then the codec tests below say nothing about the codec; regenerate on purpose."""
    assert parameters_digest(model) == (HERE / "weights.sha256").read_text().strip()


def test_the_golden_stream_decodes_to_the_golden_pixels(model) -> None:
    decoded = np.asarray(codec.decode((HERE / "image.lic").read_bytes(), model))
    expected = np.asarray(Image.open(HERE / "decoded.png"))
    assert decoded.shape == expected.shape and np.array_equal(decoded, expected)


def test_the_golden_image_encodes_to_the_golden_bytes(model) -> None:
    pixels = np.asarray(Image.open(HERE / "image.png"))
    assert codec.encode(pixels, model) == (HERE / "image.lic").read_bytes()


def test_the_golden_stream_is_a_real_workload(model) -> None:
    """Guards the golden files themselves: a stream of a few bytes would prove little about the coder."""
    header = codec.read_header((HERE / "image.lic").read_bytes())
    assert header.model == "loclic" and (header.height, header.width) == (128, 192)
    assert header.bpp > 0.3
