"""Fuzzing `lic.codec.decode` with mutated .lic streams, in a child process watched by this one.

1050 mutations of real streams: bit flips, truncations, splices of two files, inserted and overwritten bytes
(all caught by the container), and streams whose payload or header fields were changed, or filled with runs of
0xff that drive the rANS decoder's escape mode, then re-packed with a correct CRC, so that the decoder and the
model see the garbage themselves. Every case must either decode to an image of the size its header declares or
raise BitstreamError. The decodes run in a child process so that a native crash (a segfault in the C++ decoder)
or a hang is caught and reported with the case that caused it, instead of taking pytest down.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lic import codec
from lic.codec.container import pack, unpack
from tests.data_support import photo
from tests.eval_support import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CASE_SECONDS = 30  # per decode; a few hundredths of a second is normal, this only catches hangs
CRC_KINDS = ("payload+crc", "escape+crc", "header+crc")


def decode_cases(checkpoint: str, cases_file: str) -> None:
    """Child side: decode every case and print one JSON line per outcome (`start` first, so a crash names it)."""
    import faulthandler

    import torch

    from lic.checkpoint import load_checkpoint
    from lic.errors import BitstreamError

    faulthandler.enable()
    torch.set_num_threads(1)
    model, _ = load_checkpoint(checkpoint)
    for i, data in enumerate(read_cases(Path(cases_file))):
        print(json.dumps({"start": i}), flush=True)
        try:
            image = codec.decode(data, model)
            header = codec.read_header(data)
            outcome = "ok" if image.size == (header.width, header.height) else f"wrong size {image.size}"
            outcome += "" if image.mode == header.mode else f" wrong mode {image.mode}"
        except BitstreamError as err:
            outcome = "corrupt-decoding" if "coded data is corrupted" in str(err) else "rejected"
        except Exception as err:  # anything else is a defect of the decoder's guards
            outcome = f"{type(err).__name__}: {err}"
        print(json.dumps({"done": i, "outcome": outcome}), flush=True)


def write_cases(path: Path, cases: list[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack(">I", len(c)) + c for c in cases))


def read_cases(path: Path) -> Iterator[bytes]:
    blob, pos = path.read_bytes(), 0
    while pos < len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        yield blob[pos + 4 : pos + 4 + length]
        pos += 4 + length


# --- mutations ----------------------------------------------------------------------------------------------


def _flip(data: bytes, rng: np.random.Generator, start: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(rng.integers(1, 9)):
        out[rng.integers(start, len(out))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _overwrite(data: bytes, rng: np.random.Generator, start: int = 0) -> bytes:
    at = int(rng.integers(start, len(data)))
    run = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return data[:at] + run[: len(data) - at] + data[at + len(run) :]


def raw_mutation(kind: str, files: list[bytes], rng: np.random.Generator) -> bytes:
    """A damaged file as a disk or a network would damage it: the CRC no longer matches."""
    a, b = (files[i] for i in rng.integers(len(files), size=2))
    if kind == "flip":
        return _flip(a, rng)
    if kind == "truncate":
        return a[: rng.integers(len(a))]
    if kind == "splice":
        return a[: rng.integers(len(a))] + b[rng.integers(len(b)) :]
    if kind == "insert":
        at = int(rng.integers(len(a) + 1))
        return a[:at] + rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes() + a[at:]
    return _overwrite(a, rng)


def payload_mutation(files: list[bytes], rng: np.random.Generator) -> bytes:
    """Streams changed and re-packed with a correct CRC: the entropy decoder reads garbage."""
    header, streams = unpack(files[rng.integers(len(files))])
    choice = rng.integers(5)
    i = int(rng.integers(len(streams)))
    if choice == 0:
        streams[i] = _flip(streams[i], rng)
    elif choice == 1:
        streams[i] = _overwrite(streams[i], rng)
    elif choice == 2:  # shortened to whole words, as a real rANS stream would be
        streams[i] = streams[i][: max(8, 4 * int(rng.integers(len(streams[i]) // 4 + 1)))]
    elif choice == 3:
        streams[i] = rng.integers(0, 256, 4 * int(rng.integers(2, 600)), dtype=np.uint8).tobytes()
    else:
        streams = streams[::-1]
    return pack(replace(header, stream_lengths=tuple(len(s) for s in streams)), streams)


def escape_mutation(files: list[bytes], rng: np.random.Generator) -> bytes:
    """Runs of 0xff bytes, re-packed with a correct CRC: they drive the rANS decoder's escape mode, which reads
    15 times a run's length beyond it. A whole stream of 0xff crashed the decoder before decode() refused it."""
    header, streams = unpack(files[rng.integers(len(files))])
    i = int(rng.integers(len(streams)))
    choice = rng.integers(3)
    if choice == 0:  # 1 to 4 MiB of 0xff: refused (without that, reading 15 times as far crashed the process)
        streams[i] = b"\xff" * 4 * int(rng.integers(1 << 18, 1 << 20))
    elif choice == 1:  # the longest runs allowed, back to back, as long as 256 KiB
        separator = bytes([int(rng.integers(0, 15)) | 0xF0])  # high nibble 0xf, low nibble not: ends the run
        streams[i] = (b"\xff" * 15 + separator) * int(rng.integers(1, 1 << 14))
    else:  # one run of 8 to 40 bytes somewhere in a real stream
        at, run = int(rng.integers(len(streams[i]))), int(rng.integers(8, 41))
        streams[i] = (streams[i][:at] + b"\xff" * run + streams[i][at + run :])[: len(streams[i])]
    return pack(replace(header, stream_lengths=tuple(len(s) for s in streams)), streams)


def header_mutation(files: list[bytes], rng: np.random.Generator) -> bytes:
    """Header fields changed and re-packed with a correct CRC: sizes, colour mode, the split between streams."""
    header, streams = unpack(files[rng.integers(len(files))])
    choice = rng.integers(3)
    if choice == 0:
        header = replace(header, height=int(rng.integers(1, 257)), width=int(rng.integers(1, 257)))
    elif choice == 1:
        header = replace(header, mode="L" if header.mode == "RGB" else "RGB")
    else:
        joined, cut = b"".join(streams), 4 * int(rng.integers(2, sum(map(len, streams)) // 4 - 1))
        streams = [joined[:cut], joined[cut:]]
        header = replace(header, stream_lengths=tuple(len(s) for s in streams))
    return pack(header, streams)


def make_cases(files: list[bytes], seed: int = 0) -> tuple[list[str], list[bytes]]:
    rng = np.random.default_rng(seed)
    plan = {"flip": 250, "truncate": 150, "splice": 150, "insert": 100, "overwrite": 150}
    kinds, cases = [], []
    for kind, count in plan.items():
        kinds += [kind] * count
        cases += [raw_mutation(kind, files, rng) for _ in range(count)]
    kinds += ["payload+crc"] * 150 + ["escape+crc"] * 40 + ["header+crc"] * 60  # each a full decode: the slow part
    cases += [payload_mutation(files, rng) for _ in range(150)]
    cases += [escape_mutation(files, rng) for _ in range(40)]
    cases += [header_mutation(files, rng) for _ in range(60)]
    return kinds, cases


# --- the test -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> tuple[Path, list[bytes]]:
    """A checkpoint and three real streams: RGB, grayscale, and a size that needs padding."""
    from lic.checkpoint import save_checkpoint

    model = tiny_model()
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("fuzz") / "model.pt", model)
    images = [
        photo("astronaut.png").crop((200, 100, 264, 164)),
        photo("chelsea.png").crop((100, 50, 196, 114)).convert("L"),
        photo("coffee.png").crop((300, 100, 380, 148)),
    ]
    return checkpoint, [codec.encode(image, model) for image in images]


def test_mutated_streams_decode_to_the_declared_size_or_raise_bitstream_error(streams, tmp_path) -> None:
    checkpoint, files = streams
    kinds, cases = make_cases(files)
    assert len(cases) >= 1000 and sum(kind in CRC_KINDS for kind in kinds) >= 100
    write_cases(tmp_path / "cases.bin", cases)
    outcomes = run_child(checkpoint, tmp_path / "cases.bin", len(cases))

    allowed = ("ok", "rejected", "corrupt-decoding")
    defects = {i: (kinds[i], outcome) for i, outcome in outcomes.items() if outcome not in allowed}
    assert not defects, f"decoder defects (case: kind, outcome): {dict(list(defects.items())[:10])}"
    by_kind = Counter((kinds[i], outcome) for i, outcome in outcomes.items())
    raw_decoded = sum(n for (kind, outcome), n in by_kind.items() if kind not in CRC_KINDS and outcome != "rejected")
    assert raw_decoded <= 5, by_kind  # the CRC catches raw damage (a splice can rebuild the original file)
    reached_decoder = sum(n for (kind, outcome), n in by_kind.items() if kind in CRC_KINDS and outcome != "rejected")
    assert reached_decoder >= 100, by_kind  # garbage that the rANS decoder itself had to swallow


def run_child(checkpoint: Path, cases_file: Path, count: int) -> dict[int, str]:
    """Run decode_cases in a child; fail the test on a crash, a hang, or a missing outcome."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    code = f"from tests.test_codec_fuzz import decode_cases; decode_cases({str(checkpoint)!r}, {str(cases_file)!r})"
    stderr_path = cases_file.with_name("child.stderr")
    with open(stderr_path, "w") as stderr:  # a file, not a pipe: nobody reads it until the end, so it must not fill
        child = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr)
    outcomes: dict[int, str] = {}
    current, deadline = None, time.monotonic() + 300  # the first deadline covers importing torch
    try:
        while True:
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"decode hung on case {current} (no answer within {CASE_SECONDS} s)")
            line = child.stdout.readline().decode()
            if not line:
                break
            message = json.loads(line)
            if "start" in message:
                current, deadline = message["start"], time.monotonic() + CASE_SECONDS
            else:
                outcomes[message["done"]] = message["outcome"]
        returncode = child.wait(timeout=60)
        if returncode != 0:
            pytest.fail(f"child died with code {returncode} on case {current}:\n{stderr_path.read_text()[-3000:]}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert len(outcomes) == count
    return outcomes
