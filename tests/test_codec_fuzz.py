"""Fuzzing `lic.codec.decode` with mutated .lic streams, in a child process watched by this one.

1260 mutations of real streams: bit flips, truncations, splices of two files, inserted and overwritten bytes
(all caught by the container), and streams whose payload or header fields were changed, or filled with runs of
0xff that drive the rANS decoder's escape mode, then re-packed with a correct CRC, so that the decoder and the
model see the garbage themselves; and headers forged field by field with a correct CRC (any size, non-canonical
varints, other stream counts and lengths, other names, mode and padding bytes), as an attacker would. Every
case must either decode to an image of the size its header declares or raise BitstreamError, within the time a
decode of an image of the pixel budget takes (plus slack), in a child whose address space is capped. The
decodes run in a child process so that a native crash (a segfault in the C++ decoder), a hang or a runaway
allocation is caught and reported with the case that caused it, instead of taking pytest down.
"""

from __future__ import annotations

import json
import math
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
import psutil
import pytest

from lic import codec
from lic.codec.container import _varint, pack, unpack
from tests.codec_support import forge
from tests.data_support import photo
from tests.eval_support import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BUDGET_SIDE = 128  # the decode budget of the fuzz: 128 x 128 pixels, twice the largest real file's size
BUDGET_FACTOR, BUDGET_SLACK_S = 10, 5  # a case may take 10 times a budget-sized decode, plus 5 s, of CPU time
STALL_S = 600  # wall-clock seconds without an answer or CPU use that count as a stalled child
ADDRESS_SPACE = 6 << 30  # the child's cap (torch and the tiny model map about 4 GiB of address space here)
RAW_KINDS = ("flip", "truncate", "splice", "insert", "overwrite")
CRC_KINDS = ("payload+crc", "escape+crc", "header+crc")
FORGED_KINDS = ("size", "varint", "count", "lengths", "name", "flags")
ALWAYS_REFUSED = ("varint", "count", "name")  # one image, one byte string, one model: no such file decodes


def decode_cases(checkpoint: str, cases_file: str, budget_file: str) -> None:
    """Child side: time a decode of the budget's size, then decode every case and print one JSON line per
    outcome (`start` first, so a crash names it). Address space is capped, so a runaway allocation fails here."""
    import faulthandler
    import resource
    import time

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    import torch

    from lic.checkpoint import load_checkpoint
    from lic.errors import BitstreamError

    faulthandler.enable()
    torch.set_num_threads(1)
    model, _ = load_checkpoint(checkpoint)
    budget = BUDGET_SIDE * BUDGET_SIDE
    start = time.process_time()  # CPU time, like the parent's watch: other jobs on the machine do not count
    codec.decode(Path(budget_file).read_bytes(), model, max_pixels=budget)
    print(json.dumps({"budget_seconds": time.process_time() - start}), flush=True)
    for i, data in enumerate(read_cases(Path(cases_file))):
        print(json.dumps({"start": i}), flush=True)
        try:
            image = codec.decode(data, model, max_pixels=budget)
            header = codec.read_header(data)
            outcome = "ok" if image.size == (header.width, header.height) else f"wrong size {image.size}"
            outcome += "" if image.mode == header.mode else f" wrong mode {image.mode}"
        except BitstreamError as err:
            outcome = "corrupt-decoding" if "coded data is corrupted" in str(err) else "rejected"
            if "allocate" in str(err) or isinstance(err.__cause__, MemoryError):  # the cap, not the guards, held
                outcome = f"out of memory: {err}"
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


def _non_canonical(value: int, rng: np.random.Generator) -> bytes:
    """`value` in more bytes than it needs (zero groups at the end), or a number beyond 32 bits."""
    if rng.integers(4) == 0:
        return b"\xff" * 4 + bytes([int(rng.integers(0x10, 0x80))])
    canonical = bytearray(_varint(value))
    extra = int(rng.integers(1, 6 - len(canonical))) if len(canonical) < 5 else 0
    if not extra:
        return b"\x80" * 5 + b"\x00"  # six bytes
    canonical[-1] |= 0x80
    return bytes(canonical) + b"\x80" * (extra - 1) + b"\x00"


def forged_mutation(kind: str, files: list[bytes], rng: np.random.Generator) -> bytes:
    """A header forged field by field, with a correct CRC: what an attacker who knows the format can write."""
    header, streams = unpack(files[rng.integers(len(files))])
    choice = int(rng.integers(3))
    if kind == "size":  # within the budget (a decode of that size), anywhere in the format, or just over
        if choice == 0:
            height, width = (int(v) for v in rng.integers(1, BUDGET_SIDE + 1, 2))
        elif choice == 1:
            height, width = (int(math.exp(v)) for v in rng.uniform(0, math.log(65535), 2))
        else:
            height, width = BUDGET_SIDE, BUDGET_SIDE + int(rng.integers(1, 64))
        return forge(replace(header, height=height, width=width), streams)
    if kind == "varint":
        if choice == 0:
            return forge(header, streams, height=_non_canonical(header.height, rng))
        if choice == 1:
            return forge(header, streams, width=_non_canonical(header.width, rng))
        lengths = [_varint(len(s)) for s in streams]
        i = int(rng.integers(len(lengths)))
        lengths[i] = _non_canonical(len(streams[i]), rng)
        return forge(header, streams, lengths=lengths)
    if kind == "count":  # a stream dropped, or one to four more (empty, garbage words, a copy)
        if choice == 0:
            return forge(header, streams[: int(rng.integers(len(streams)))])
        extra = [b"", rng.integers(0, 256, 4 * int(rng.integers(2, 200)), dtype=np.uint8).tobytes(), streams[0]]
        return forge(header, streams + [extra[int(rng.integers(3))] for _ in range(int(rng.integers(1, 5)))])
    if kind == "lengths":  # the same bytes split elsewhere, words appended to a stream, or lengths that lie
        if choice == 0:
            joined, cut = b"".join(streams), 4 * int(rng.integers(0, sum(map(len, streams)) // 4 + 1))
            return forge(header, [joined[:cut], joined[cut:]])
        if choice == 1:
            i, words = int(rng.integers(len(streams))), 4 * int(rng.integers(1, 1 << 14))
            streams[i] += rng.integers(0, 256, words, dtype=np.uint8).tobytes()
            return forge(header, streams)
        lengths = [_varint(int(rng.integers(0, 1 << 20))) for _ in streams]
        return forge(header, streams, lengths=lengths)
    if kind == "name":  # another registry name (the fingerprint stays), an empty or overlong one, a control byte
        if choice == 0:
            name = rng.choice(list(b"abcdefghijklmnopqrstuvwxyz0123456789-"), int(rng.integers(1, 65)))
            return forge(header, streams, name=bytes(name.tolist()))
        if choice == 1:
            return forge(header, streams, name=b"loclic" * int(rng.choice([0, 11, 40])))
        name = bytearray(header.model.encode())
        name[int(rng.integers(len(name)))] = int(rng.choice([0, 9, 0x7F, 0xC3]))
        return forge(header, streams, name=bytes(name))
    return forge(header, streams, mode=int(rng.integers(256)), padding=int(rng.integers(256)))  # flags


def make_cases(files: list[bytes], seed: int = 0) -> tuple[list[str], list[bytes]]:
    rng = np.random.default_rng(seed)
    plan = dict(zip(RAW_KINDS, (250, 150, 150, 100, 150), strict=True))
    kinds, cases = [], []
    for kind, count in plan.items():
        kinds += [kind] * count
        cases += [raw_mutation(kind, files, rng) for _ in range(count)]
    kinds += ["payload+crc"] * 150 + ["escape+crc"] * 40 + ["header+crc"] * 60  # each a full decode: the slow part
    cases += [payload_mutation(files, rng) for _ in range(150)]
    cases += [escape_mutation(files, rng) for _ in range(40)]
    cases += [header_mutation(files, rng) for _ in range(60)]
    forged = {"size": 60, "varint": 30, "count": 30, "lengths": 45, "name": 30, "flags": 15}
    for kind, count in forged.items():
        kinds += [kind] * count
        cases += [forged_mutation(kind, files, rng) for _ in range(count)]
    return kinds, cases


# --- the test -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> tuple[Path, list[bytes], Path]:
    """A checkpoint, three real streams (RGB, grayscale, and a size that needs padding) and a file of exactly
    the fuzz's pixel budget, whose decode time sets the time a case may take."""
    from lic.checkpoint import save_checkpoint

    model = tiny_model()
    folder = tmp_path_factory.mktemp("fuzz")
    checkpoint = save_checkpoint(folder / "model.pt", model)
    images = [
        photo("astronaut.png").crop((200, 100, 264, 164)),
        photo("chelsea.png").crop((100, 50, 196, 114)).convert("L"),
        photo("coffee.png").crop((300, 100, 380, 148)),
    ]
    budget_file = folder / "budget.lic"
    budget_file.write_bytes(codec.encode(photo("astronaut.png").crop((0, 0, BUDGET_SIDE, BUDGET_SIDE)), model))
    return checkpoint, [codec.encode(image, model) for image in images], budget_file


def test_mutated_streams_decode_to_the_declared_size_or_raise_bitstream_error(streams, tmp_path) -> None:
    checkpoint, files, budget_file = streams
    kinds, cases = make_cases(files)
    assert len(cases) >= 1000 and sum(kind in CRC_KINDS for kind in kinds) >= 100
    write_cases(tmp_path / "cases.bin", cases)
    outcomes = run_child(checkpoint, tmp_path / "cases.bin", budget_file, len(cases))

    allowed = ("ok", "rejected", "corrupt-decoding")
    defects = {i: (kinds[i], outcome) for i, outcome in outcomes.items() if outcome not in allowed}
    assert not defects, f"decoder defects (case: kind, outcome): {dict(list(defects.items())[:10])}"
    by_kind = Counter((kinds[i], outcome) for i, outcome in outcomes.items())
    raw_decoded = sum(n for (kind, outcome), n in by_kind.items() if kind in RAW_KINDS and outcome != "rejected")
    assert raw_decoded <= 5, by_kind  # the CRC catches raw damage (a splice can rebuild the original file)
    reached_decoder = sum(n for (kind, outcome), n in by_kind.items() if kind in CRC_KINDS and outcome != "rejected")
    assert reached_decoder >= 100, by_kind  # garbage that the rANS decoder itself had to swallow
    for kind in ALWAYS_REFUSED:
        assert by_kind[(kind, "rejected")] == plan_count(kinds, kind), by_kind
    forged_decoded = sum(n for (kind, outcome), n in by_kind.items() if kind in FORGED_KINDS and outcome != "rejected")
    assert forged_decoded >= 15, by_kind  # forged sizes within the budget reach the model, so its time is tested


def plan_count(kinds: list[str], kind: str) -> int:
    return sum(k == kind for k in kinds)


def run_child(checkpoint: Path, cases_file: Path, budget_file: Path, count: int) -> dict[int, str]:
    """Run decode_cases in a child; fail the test on a crash, a case slower than the budget allows, or a
    missing outcome."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    arguments = ", ".join(repr(str(path)) for path in (checkpoint, cases_file, budget_file))
    code = f"from tests.test_codec_fuzz import decode_cases; decode_cases({arguments})"
    stderr_path = cases_file.with_name("child.stderr")
    with open(stderr_path, "w") as stderr:  # a file, not a pipe: nobody reads it until the end, so it must not fill
        child = subprocess.Popen(  # unbuffered: a line select() saw must not wait in a buffer while it blocks
            [sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr, bufsize=0
        )
    outcomes: dict[int, str] = {}
    watched = psutil.Process(child.pid)

    def cpu_seconds() -> float:
        times = watched.cpu_times()
        return times.user + times.system

    # The child's CPU time is what a case costs (wall time also counts whatever else the machine runs).
    current, case_seconds = None, 300.0  # until the child has timed a budget-sized decode: covers importing torch
    cpu_start, wall_start = 0.0, time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([child.stdout], [], [], 1.0)
            if not ready:
                if child.poll() is None and cpu_seconds() - cpu_start > case_seconds:
                    pytest.fail(f"decode of case {current} used more than the budget allows ({case_seconds:.1f} CPU s)")
                if time.monotonic() - wall_start > STALL_S:
                    pytest.fail(f"decode of case {current} stalled (no answer for {STALL_S} s)")
                continue
            line = child.stdout.readline().decode()
            if not line:
                break
            message = json.loads(line)
            if "budget_seconds" in message:
                case_seconds = BUDGET_FACTOR * message["budget_seconds"] + BUDGET_SLACK_S
            elif "start" in message:
                current, cpu_start, wall_start = message["start"], cpu_seconds(), time.monotonic()
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
