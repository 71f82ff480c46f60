"""`lic compress/decompress --jobs`: a folder of photos coded on one core and on all of them, with the real CLI.

Each run is a fresh `lic` process, as a user starts it (imports and model loading included). The files must come
out byte-identical whatever --jobs is; the section fails otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.codec_speed import HEIGHT, WIDTH, _model
from bench.common import Section, table
from lic.checkpoint import save_checkpoint

PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "camera.png", "moon.png", "coins.png",
]  # fmt: skip
SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"
LIC = [sys.executable, "-c", "from lic.cli import main; main()"]


def _timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([*LIC, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def run() -> Section:
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="lic-bench-jobs-") as tmp:
        root = Path(tmp)
        (root / "photos").mkdir()
        for name in PHOTOS:
            image = Image.open(SKIMAGE_DATA / name).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
            image.save(root / "photos" / f"{Path(name).stem}.png")
        checkpoint = save_checkpoint(root / "model.pt", _model("loclic", {}))
        seconds: dict[str, dict[int, float]] = {"compress": {}, "decompress": {}}
        for jobs in sorted({1, cores}):
            coded, decoded = root / f"coded{jobs}", root / f"decoded{jobs}"
            seconds["compress"][jobs] = _timed(
                ["compress", str(root / "photos"), "--out-dir", str(coded), "-m", str(checkpoint), "-j", str(jobs)]
            )
            seconds["decompress"][jobs] = _timed(
                ["decompress", str(coded), "--out-dir", str(decoded), "-m", str(checkpoint), "-j", str(jobs)]
            )
        for kind in ("coded", "decoded"):
            if _contents(root / f"{kind}1") != _contents(root / f"{kind}{cores}"):
                raise RuntimeError(f"--jobs {cores} {kind} other bytes than --jobs 1")
    rows = [
        [command, f"{times[1]:.1f}", f"{times[cores]:.1f}", f"{times[1] / times[cores]:.2f}x"]
        for command, times in seconds.items()
    ]
    markdown = (
        f"{len(PHOTOS)} photos (scikit-image's, resized to {WIDTH}x{HEIGHT}) coded by `lic compress` and `lic "
        f"decompress` with the LoC-LIC of the codec speed section, each run a fresh process (imports and model "
        f"loading included); --jobs {cores} is the default on this machine. The outputs of both runs are "
        "byte-identical.\n\n" + table(["command", "--jobs 1 s", f"--jobs {cores} s", "speed-up"], rows)
    )
    return Section("Parallel files (--jobs)", markdown, {"cores": cores, "seconds": seconds, "photos": len(PHOTOS)})
