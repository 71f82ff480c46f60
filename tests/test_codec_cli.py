"""`lic compress / decompress / info` on real photos, bad files and bad arguments, and the model resolver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lic import codec
from lic.cli import main
from lic.codec import resolve
from lic.codec.images import from_tensor, to_pixels, to_tensor
from lic.errors import LicError
from tests.codec_support import forward_reconstruction
from tests.data_support import SKIMAGE_DATA, bilevel_png
from tests.eval_support import tiny_checkpoint

MATPLOTLIB_DATA = Path(__import__("matplotlib").get_data_path()) / "sample_data"
PHOTOS = [SKIMAGE_DATA / "astronaut.png", SKIMAGE_DATA / "camera.png", MATPLOTLIB_DATA / "grace_hopper.jpg"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return resolve.resolve_model(str(checkpoint))


def lic(capsys, *args: str) -> tuple[int, str, str]:
    """Run the `lic` entry point in this process: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["lic", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def reconstruction(model, image: Image.Image) -> np.ndarray:
    """The model's reconstruction by the eval-mode forward pass, independent of the codec."""
    pixels, mode = to_pixels(image)
    x = to_tensor(pixels)
    return np.asarray(from_tensor(forward_reconstruction(model, x), mode))


def test_round_trip_of_real_photos_gives_the_models_reconstruction(capsys, checkpoint, model, tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, photos)
    code, out, err = lic(capsys, "compress", photos, "--out-dir", tmp_path / "coded", "--model", checkpoint)
    assert code == 0, err
    assert "files" in out and "mean bpp" in out  # the summary table
    coded = sorted((tmp_path / "coded").iterdir())
    assert [p.name for p in coded] == ["astronaut.lic", "camera.lic", "grace_hopper.lic"]

    code, out, err = lic(capsys, "info", *coded, "--json")
    assert code == 0, err
    for row, path in zip(json.loads(out), coded, strict=True):
        assert row["bytes"] == path.stat().st_size
        assert row["bpp"] == path.stat().st_size * 8 / (row["height"] * row["width"])
        assert row["model"] == "loclic" and row["fingerprint"] == codec.fingerprint(model)

    code, _, err = lic(capsys, "decompress", f"{tmp_path}/coded/*.lic", "--out-dir", tmp_path / "out", "-m", checkpoint)
    assert code == 0, err
    for photo in PHOTOS:
        original = codec.open_image(photo)
        with Image.open(tmp_path / "out" / f"{photo.stem}.png") as decoded:
            assert decoded.mode == original.mode  # camera.png stays grayscale
            assert np.array_equal(np.asarray(decoded), reconstruction(model, original)), photo.name


def test_outputs_go_beside_inputs_or_to_o_and_are_not_clobbered(capsys, checkpoint, tmp_path) -> None:
    source = tmp_path / "cat.png"
    Image.open(SKIMAGE_DATA / "chelsea.png").crop((0, 0, 80, 60)).save(source)
    assert lic(capsys, "compress", source, "-m", checkpoint)[0] == 0
    assert (tmp_path / "cat.lic").is_file()
    code, _, err = lic(capsys, "compress", source, "-m", checkpoint)
    assert code == 1 and "exists (use --force" in one_line_error(err)
    assert lic(capsys, "compress", source, "-m", checkpoint, "--force")[0] == 0
    code, _, err = lic(capsys, "decompress", tmp_path / "cat.lic", "-m", checkpoint, "-o", tmp_path / "cat.ppm")
    assert code == 0, err
    with Image.open(tmp_path / "cat.ppm") as decoded:
        assert (decoded.format, decoded.size) == ("PPM", (80, 60))
    code, _, err = lic(capsys, "decompress", tmp_path / "cat.lic", "-m", checkpoint)
    assert code == 1 and "replace the input" not in err and "cat.png exists" in one_line_error(err)
    code, _, err = lic(capsys, "compress", source, source.with_name("cat.lic"), "-m", checkpoint, "-o", "x.lic")
    assert code == 2 and "one file" in one_line_error(err)  # a usage error
    Image.open(source).save(tmp_path / "cat.jpg")
    code, _, err = lic(capsys, "compress", tmp_path, "-m", checkpoint, "--force")
    assert code == 2 and "would both be written to" in one_line_error(err)


@pytest.fixture(scope="module")
def good_lic(model, tmp_path_factory) -> bytes:
    image = Image.open(SKIMAGE_DATA / "coffee.png").crop((0, 0, 100, 70))
    return codec.encode(image, model)


def _bad_files(good: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    header_bytes = codec.read_header(good).header_bytes
    flip = lambda data, i: data[:i] + bytes([data[i] ^ 0x04]) + data[i + 1 :]  # noqa: E731
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "random": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "header bit": flip(good, 10),
        "payload bit": flip(good, header_bytes + 100),
        "a PNG": (SKIMAGE_DATA / "camera.png").read_bytes()[:3000],
    }


def test_bad_lic_files_end_with_one_line_errors_and_no_output(capsys, checkpoint, good_lic, tmp_path) -> None:
    messages = {}
    for name, data in _bad_files(good_lic).items():
        path = tmp_path / f"{name.replace(' ', '_')}.lic"
        path.write_bytes(data)
        code, _, err = lic(capsys, "decompress", path, "-m", checkpoint, "--out-dir", tmp_path / "out")
        assert code == 1, name
        messages[name] = one_line_error(err)
        code, _, err = lic(capsys, "info", path)
        assert code == 1 and one_line_error(err), name
    assert not list((tmp_path / "out").iterdir())  # nothing written, not even temporary files
    assert "empty" in messages["empty"] and "truncated" in messages["truncated"]
    assert "not a .lic file" in messages["random"] and "not a .lic file" in messages["a PNG"]
    assert "checksum" in messages["header bit"] and "checksum" in messages["payload bit"]


def test_one_bad_file_in_a_batch_fails_the_command_but_not_the_others(capsys, checkpoint, good_lic, tmp_path) -> None:
    (tmp_path / "a.lic").write_bytes(good_lic)
    (tmp_path / "b.lic").write_bytes(good_lic[:-5])
    (tmp_path / "c.lic").write_bytes(good_lic)
    code, _, err = lic(capsys, "decompress", tmp_path, "-m", checkpoint)
    assert code == 3  # partly done
    assert "b.lic" in err and "1 of 3 files failed" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png", "c.png"]


def test_the_console_script_exits_1_with_one_line(checkpoint, tmp_path) -> None:
    (tmp_path / "noise.lic").write_bytes(os.urandom(500))
    lic_script = Path(sys.executable).with_name("lic")
    done = subprocess.run(
        [lic_script, "decompress", tmp_path / "noise.lic", "-m", checkpoint],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert one_line_error(done.stderr) == f"error: {tmp_path / 'noise.lic'}: not a .lic file (bad magic bytes)"


def test_a_foreign_model_is_named_with_both_fingerprints(capsys, model, good_lic, tmp_path) -> None:
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    (tmp_path / "coffee.lic").write_bytes(good_lic)
    code, _, err = lic(capsys, "decompress", tmp_path / "coffee.lic", "-m", other)
    line = one_line_error(err)
    assert code == 1 and codec.fingerprint(model) in line
    assert codec.fingerprint(resolve.resolve_model(str(other))) in line
    code, _, err = lic(capsys, "decompress", tmp_path / "coffee.lic")  # no model: say which one the file needs
    assert code == 2 and f"fingerprint {codec.fingerprint(model)}" in one_line_error(err)  # --model is missing


def test_bad_arguments_are_clear_errors(capsys, checkpoint, tmp_path) -> None:
    image = tmp_path / "in.png"
    Image.open(SKIMAGE_DATA / "chelsea.png").crop((0, 0, 64, 64)).save(image)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    cases = {
        "no such file": ["compress", tmp_path / "missing.png", "-m", checkpoint],
        "matches no files": ["compress", f"{tmp_path}/*.jpg", "-m", checkpoint],
        "holds no": ["compress", tmp_path / "empty", "-m", checkpoint],
        "not a regular file": ["compress", tmp_path / "pipe.png", "-m", checkpoint],
        "unknown model": ["compress", image, "-m", tmp_path / "nope.pt"],
        "not a readable checkpoint": ["compress", image, "-m", tmp_path / "file"],
        "folder has no model.pt": ["compress", image, "-m", tmp_path / "empty"],
        "cannot create output folder": ["compress", image, "-m", checkpoint, "--out-dir", tmp_path / "file" / "x"],
        "cannot create output folder /proc": ["compress", image, "-m", checkpoint, "--out-dir", "/proc/lic-test"],
        "not both": ["compress", image, "-m", checkpoint, "-o", "a.lic", "--out-dir", tmp_path],
        "unknown image format": ["decompress", tmp_path / "given.lic", "-m", checkpoint, "-o", tmp_path / "x.zzz"],
    }
    (tmp_path / "given.lic").write_bytes(b"LIC")
    usage_errors = {"not both", "unknown image format"}  # options that do not fit: exit 2; the rest failed: 1
    for expected, args in cases.items():
        code, _, err = lic(capsys, *args)
        assert code == (2 if expected in usage_errors else 1), expected
        assert expected in one_line_error(err), (expected, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "given.lic", "in.png", "pipe.png"]


def test_no_partial_output_when_writing_fails(capsys, checkpoint, good_lic, tmp_path, monkeypatch) -> None:
    (tmp_path / "coffee.lic").write_bytes(good_lic)

    def half_then_fail(self, fp, format=None, **params):
        Path(fp).write_bytes(b"\x89PNG half of a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    code, _, err = lic(capsys, "decompress", tmp_path / "coffee.lic", "-m", checkpoint)
    assert code == 1 and "No space left on device" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee.lic"]


# --- the resolver -------------------------------------------------------------------------------------------


def test_resolver_accepts_files_and_pulled_folders(checkpoint, model, tmp_path) -> None:
    folder = tmp_path / "pulled"
    folder.mkdir()
    shutil.copy(checkpoint, folder / "model.pt")
    for ref in (str(checkpoint), str(folder)):
        loaded = resolve.resolve_model(ref)
        assert not loaded.training and codec.fingerprint(loaded) == codec.fingerprint(model)


def test_resolver_hands_registry_uris_to_the_registry(checkpoint, model, monkeypatch) -> None:
    import lic.registry

    asked = []
    monkeypatch.setattr(lic.registry, "fetch_checkpoint", lambda uri: asked.append(uri) or checkpoint, raising=False)
    loaded = resolve.resolve_model("models:/loclic-mse@champion")
    assert asked == ["models:/loclic-mse@champion"]
    assert codec.fingerprint(loaded) == codec.fingerprint(model)
    monkeypatch.setitem(sys.modules, "lic.registry", None)  # as if the registry package were not installed
    with pytest.raises(LicError, match="registry support is not installed"):
        resolve.resolve_model("runs:/0123/model")


def test_decompress_has_a_budget_and_compress_refuses_bombs(capsys, checkpoint, good_lic, tmp_path) -> None:
    (tmp_path / "coffee.lic").write_bytes(good_lic)  # 100 x 70
    code, _, err = lic(capsys, "decompress", tmp_path / "coffee.lic", "-m", checkpoint, "--max-pixels", 6999)
    assert code == 1 and "budget of 6,999 pixels" in one_line_error(err)
    assert not (tmp_path / "coffee.png").exists()
    code, _, err = lic(capsys, "decompress", tmp_path / "coffee.lic", "-m", checkpoint, "--max-pixels", 7000)
    assert code == 0, err
    (tmp_path / "bomb.png").write_bytes(bilevel_png(13300, 13300))
    code, _, err = lic(capsys, "compress", tmp_path / "bomb.png", "-m", checkpoint)
    assert code == 1 and "larger than the limit of 33,554,432 pixels" in one_line_error(err)


def _pid_and_wait(source: Path, target: Path) -> tuple[int, float]:
    """A stand-in for coding one file: which process ran it (as the 'size'); a pause so both workers get work."""
    import time

    if source.name == "bad":
        raise LicError("cannot read")
    time.sleep(0.3)
    return os.getpid(), 0.0


def test_jobs_run_files_in_separate_processes_and_report_each_outcome(tmp_path) -> None:
    from lic.codec.cli import _outcomes

    jobs = [(tmp_path / name, tmp_path / f"{name}.out") for name in ("a", "b", "bad", "c", "d")]
    outcomes = dict(_outcomes(jobs, _pid_and_wait, workers=2))
    assert set(outcomes) == {source for source, _ in jobs}
    assert outcomes[tmp_path / "bad"].error == f"{tmp_path / 'bad'}: cannot read"
    pids = {outcome.size for source, outcome in outcomes.items() if source.name != "bad"}
    assert len(pids) == 2 and os.getpid() not in pids
    serial = dict(_outcomes(jobs, _pid_and_wait, workers=1))
    assert {outcome.size for outcome in serial.values() if outcome.error is None} == {os.getpid()}


FORKED_AFTER_THREADS = """
from pathlib import Path
import torch
from lic.codec.cli import _outcomes

torch.set_num_threads(2)
torch.ones(4_000_000).mul_(3)  # the parent has run an operation on its OpenMP thread pool, as loading a model does

def work(source: Path, target: Path) -> tuple[int, float]:
    return int(torch.ones(3, 768, 512).div(255).sum() > 0), 0.0  # big enough for a parallel region

jobs = [(Path(name), Path(name + ".out")) for name in "ab"]
print(sorted(outcome.size for _, outcome in _outcomes(jobs, work, 2)))
"""


def test_jobs_workers_forked_after_the_parent_used_threads_do_not_hang() -> None:
    """A pool of OpenMP threads does not survive fork: a worker that enters a parallel region on the parent's pool
    waits forever (`lic compress -j 2` hung so on 768x512 photos). Workers run on one thread."""
    done = subprocess.run(
        [sys.executable, "-c", FORKED_AFTER_THREADS], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["[1,", "1]"]


def test_jobs_give_the_same_bytes_and_pixels_as_one_job(capsys, checkpoint, tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, photos)
    rgba = Image.open(SKIMAGE_DATA / "chelsea.png").crop((0, 0, 90, 70)).convert("RGBA")
    rgba.save(photos / "with_alpha.png")
    (photos / "broken.png").write_bytes(b"not a png")
    for jobs in ("1", "3"):
        code, _, err = lic(
            capsys, "compress", photos, "--out-dir", tmp_path / f"coded{jobs}", "-m", checkpoint, "-j", jobs
        )
        assert code == 3 and "broken.png" in err and "1 of 5 files failed" in err, err  # partly done
        assert err.count("alpha channel dropped") == 1, err  # a worker's warning reaches the user once
    first = sorted((tmp_path / "coded1").iterdir())
    assert len(first) == 4
    for path in first:
        assert (tmp_path / "coded3" / path.name).read_bytes() == path.read_bytes(), path.name
    for jobs in ("1", "2"):
        code, _, err = lic(
            capsys,
            "decompress",
            tmp_path / "coded3",
            "--out-dir",
            tmp_path / f"out{jobs}",
            "-m",
            checkpoint,
            "--jobs",
            jobs,
        )
        assert code == 0, err
    for path in sorted((tmp_path / "out1").iterdir()):
        assert (tmp_path / "out2" / path.name).read_bytes() == path.read_bytes(), path.name
