"""The golden bitstream: a committed model and .lic that must keep decoding to the committed pixels, bit for bit,
and the committed image must keep encoding to the committed bytes. A change to the container format, the entropy
coding, the model's math (say, LocalContext's mask) or a speed-up that is not exact fails here; when such a change
is meant, bump the versions it concerns and run `python -m tests.golden.make_golden`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lic import codec
from lic.models import build
from tests.golden.make_golden import HERE, golden_model, machine, parameters_digest

RECORDED_ON = json.loads((HERE / "machine.json").read_text())
same_arithmetic = pytest.mark.skipif(
    machine() != RECORDED_ON, reason=f"the golden stream was recorded with {RECORDED_ON}, not {machine()}"
)
# What limits torch's own kernels and oneDNN's to an instruction set, when set before torch is imported: a CPU
# with more (an AVX-512 EPYC) then computes as one with only that set (an AVX2 EPYC) did.
INSTRUCTION_SET_LIMITS = {"AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return golden_model()


def test_the_golden_model_is_the_one_the_stream_was_made_with(model) -> None:
    """Fails when the generated parameters change (the generator, the architecture's parameter names or shapes):
    then the codec tests below say nothing about the codec; regenerate on purpose."""
    assert parameters_digest(model) == (HERE / "weights.sha256").read_text().strip()


@same_arithmetic
def test_the_golden_stream_decodes_to_the_golden_pixels(model) -> None:
    decoded = np.asarray(codec.decode((HERE / "image.lic").read_bytes(), model))
    expected = np.asarray(Image.open(HERE / "decoded.png"))
    assert decoded.shape == expected.shape and np.array_equal(decoded, expected)


@same_arithmetic
def test_the_golden_image_encodes_to_the_golden_bytes(model) -> None:
    pixels = np.asarray(Image.open(HERE / "image.png"))
    assert codec.encode(pixels, model) == (HERE / "image.lic").read_bytes()


def test_the_golden_stream_holds_on_the_recorded_instruction_set() -> None:
    """Where the CPU is of the recording vendor but has other vector extensions, the two stream tests above run
    in a process limited to the recorded instruction set, so they check the bytes there too instead of skipping."""
    here = machine()
    if here == RECORDED_ON:
        pytest.skip("the stream tests run in this process")
    limits = INSTRUCTION_SET_LIMITS.get(RECORDED_ON["cpu_capability"])
    if limits is None or any(here[key] != RECORDED_ON[key] for key in ("torch", "cpu_vendor")):
        pytest.skip(f"the golden stream was recorded with {RECORDED_ON}: no instruction set limit gives {here}")
    stream_tests = [
        test_the_golden_stream_decodes_to_the_golden_pixels,
        test_the_golden_image_encodes_to_the_golden_bytes,
    ]
    limited = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + [f"{__file__}::{test.__name__}" for test in stream_tests],
        cwd=HERE.parents[1], env=os.environ | limits,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = limited.stdout.strip().splitlines()[-1]
    if "skipped" in summary and limited.returncode == 0:
        pytest.skip(f"the limited process is not the recording machine either: {limited.stdout[-600:]}")
    assert limited.returncode == 0 and f"{len(stream_tests)} passed" in summary, limited.stdout[-3000:]


def test_the_golden_stream_is_a_real_workload(model) -> None:
    """Guards the golden files themselves: a stream of a few bytes would prove little about the coder."""
    header = codec.read_header((HERE / "image.lic").read_bytes())
    assert header.model == "loclic" and (header.height, header.width) == (128, 192)
    assert header.bpp > 0.3


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


def test_side_by_side_runs_the_second_part_on_the_lane_only_while_coding() -> None:
    """The lane is used only inside a coder (never by training), its parts compute their halves in turn, and a
    part that fails leaves the lane free for the next call."""
    import threading

    from lic.models.halves import convolutions_in_halves, run_halves_concurrently, side_by_side

    def where() -> str:
        return threading.current_thread().name

    model = build("loclic", N=(16, 32, 64), M=64, slices=4).eval()
    before = run_halves_concurrently(True)
    try:
        here = where()
        assert side_by_side(where, where) == (here, here)
        with convolutions_in_halves(model):
            first, second = side_by_side(where, where)
            assert first == here and second.startswith("lic-lane")

            def fails() -> None:
                raise ValueError("first part failed")

            with pytest.raises(ValueError, match="first part failed"):
                side_by_side(fails, where)
            assert side_by_side(where, where)[1].startswith("lic-lane")
        run_halves_concurrently(False)
        with convolutions_in_halves(model):
            assert side_by_side(where, where) == (here, here)
    finally:
        run_halves_concurrently(before)


def test_coding_on_two_cores_gives_the_bytes_and_pixels_of_one() -> None:
    """What side_by_side and the concurrent halves rest on, end to end: the same stream and reconstruction whether
    the coder uses the lane thread or not."""
    from lic.models.halves import run_halves_concurrently

    torch.manual_seed(2)
    model = build("loclic", N=(16, 32, 64), M=64, slices=4).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(4)  # a latent that costs bits: a coder desynchronised by any change shows it
    model.update(force=True)
    x = torch.rand(1, 3, 128, 192)
    results = []
    before = run_halves_concurrently(True)
    try:
        for concurrent in (True, False):
            run_halves_concurrently(concurrent)
            coded = codec.compress(model, x)
            results.append((coded.streams, codec.decompress(model, coded)))
    finally:
        run_halves_concurrently(before)
    (streams_two, decoded_two), (streams_one, decoded_one) = results
    assert sum(map(len, streams_two)) > 500
    assert streams_two == streams_one and torch.equal(decoded_two, decoded_one)
