"""`lic` follows command-line conventions: --version, -h, exit codes, readable help, `-` for stdin/stdout, and it
imports only what a command needs (no torch to print help or read a header; no pipeline stack to code images)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import lic
from lic.cli import main
from lic.codec.container import Header, pack
from tests.data_support import SKIMAGE_DATA
from tests.eval_support import tiny_checkpoint

LIC = Path(sys.executable).with_name("lic")
PIPELINE_STACK = ("ray", "mlflow", "dvc", "ffcv")
# Runs the CLI in a fresh interpreter and, at exit, writes which top-level packages it imported to stderr's end.
IMPORTS_PROBE = (
    "import atexit, json, sys\n"
    "top = lambda: sorted({m.split('.')[0] for m in sys.modules})\n"
    "atexit.register(lambda: sys.stderr.write('\\nIMPORTED ' + json.dumps(top())))\n"
    "from lic.cli import main\n"
    "main()\n"
)


def run(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The console script in its own process: for what must not load torch (a fresh process each time)."""
    return subprocess.run([LIC, *map(str, args)], input=stdin, capture_output=True, timeout=300)


@pytest.fixture
def lic_here(capsysbinary, monkeypatch):
    """The entry point in this process, torch already loaded: (exit code, stdout bytes, stderr text)."""

    def call(*args, stdin: bytes = b"") -> tuple[int, bytes, str]:
        monkeypatch.setattr(sys, "argv", ["lic", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        out = capsysbinary.readouterr()
        return code, out.out, out.err.decode()

    return call


def imported_by(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    head, _, modules = done.stderr.rpartition("\nIMPORTED ")
    done.stderr = head
    return done, set(json.loads(modules))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "cat.png"
    Image.open(SKIMAGE_DATA / "chelsea.png").crop((0, 0, 96, 64)).save(path)
    return path


def fake_lic(path: Path) -> Path:
    """A valid container around made-up streams: all `lic info` reads."""
    streams = [b"\x01" * 64, b"\x02" * 16]
    path.write_bytes(pack(Header("loclic", "0123abcd", 64, 96, "RGB", 64, (64, 16)), streams))
    return path


def test_version_and_h_everywhere() -> None:
    version = run("--version")
    assert (version.returncode, version.stdout.decode().strip()) == (0, f"lic {lic.__version__}")
    for args in (["-h"], ["compress", "-h"], ["info", "-h"], ["data", "-h"], ["data", "fetch", "-h"], ["stack", "-h"]):
        done = run(*args)
        assert done.returncode == 0 and b"Usage: lic" in done.stdout, args


def test_help_shows_metavars_not_python_types() -> None:
    for args in (["compress", "-h"], ["decompress", "-h"], ["info", "-h"], ["evaluate", "-h"], ["data", "fetch", "-h"]):
        text = run(*args).stdout.decode()
        assert "<list[" not in text and "<bool>" not in text and "<str>" not in text.split("Options:")[0], text
    text = run("compress", "-h").stdout.decode()
    assert "{IMAGE}..." in text and "-m, --model MODEL" in text and "-o, --output FILE" in text


def test_exit_codes_tell_usage_errors_from_failures(photo, checkpoint, tmp_path) -> None:
    usage = [["compress"], ["compress", photo], ["compress", photo, "-m", checkpoint, "--bogus"], ["nonsense"]]
    for args in usage:
        assert run(*args).returncode == 2, args
    conflicting = run("compress", photo, "-m", checkpoint, "-o", "a.lic", "--out-dir", tmp_path)
    assert conflicting.returncode == 2 and conflicting.stderr.decode().startswith("error: give either")
    missing = run("compress", tmp_path / "missing.png", "-m", checkpoint)
    assert missing.returncode == 1 and missing.stderr.decode().strip().endswith("missing.png: no such file or folder")


def test_a_non_image_names_its_path_once(lic_here, checkpoint, tmp_path) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("not pixels")
    code, _, err = lic_here("compress", text_file, "-m", checkpoint)
    assert code == 1 and err.strip() == f"error: {text_file}: not an image file Pillow can read"
    (tmp_path / "cat.png").write_bytes((SKIMAGE_DATA / "coffee.png").read_bytes())
    code, _, err = lic_here("compress", tmp_path, "-m", checkpoint, "--out-dir", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 3 and f"error: {text_file}: not an image file Pillow can read" in lines  # partly done
    assert lines[-1] == "error: 1 of 2 files failed" and (tmp_path / "out" / "cat.lic").is_file()
    code, _, err = lic_here("compress", "-", "-m", checkpoint, stdin=b"not pixels")
    assert code == 1 and err.strip() == "error: standard input: not an image file Pillow can read"


def test_stdin_and_stdout_give_the_same_bytes_as_files(lic_here, photo, checkpoint, tmp_path) -> None:
    assert lic_here("compress", photo, "-m", checkpoint)[0] == 0
    from_file = photo.with_suffix(".lic").read_bytes()
    code, out, err = lic_here("compress", "-", "-m", checkpoint, stdin=photo.read_bytes())
    assert code == 0 and out == from_file and "mean bpp" in err  # the summary moves to stderr
    assert lic_here("compress", photo, "-m", checkpoint, "-o", "-")[1] == from_file

    assert lic_here("decompress", photo.with_suffix(".lic"), "-m", checkpoint, "-o", tmp_path / "file.png")[0] == 0
    code, out, _ = lic_here("decompress", "-", "-m", checkpoint, stdin=from_file)
    assert code == 0 and out == (tmp_path / "file.png").read_bytes()
    code, _, err = lic_here("decompress", "-", stdin=from_file)
    assert code == 2 and err.startswith("error: standard input was encoded by model loclic")
    code, _, err = lic_here("decompress", "-", "-m", checkpoint, stdin=b"LIC")
    assert code == 1 and err.strip().startswith("error: standard input: file ends inside the header")

    code, out, _ = lic_here("info", "-", "--json", stdin=from_file)
    assert code == 0 and json.loads(out)[0]["bytes"] == len(from_file)
    code, _, err = lic_here("compress", "-", photo, "-m", checkpoint)
    assert code == 2 and "must be the only input" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.lic", "cat.png", "file.png"]  # nothing else written


def test_help_info_and_argument_errors_import_no_torch(tmp_path) -> None:
    lic_file = fake_lic(tmp_path / "photo.lic")
    light = (["--help"], ["--version"], ["compress", "-h"], ["info", lic_file], ["compress"], ["decompress", lic_file])
    for args in light:
        done, modules = imported_by(*args)
        assert done.returncode in (0, 2), (args, done.stderr)
        assert not modules & {"torch", "compressai"}, (args, sorted(modules & {"torch", "compressai"}))
    done, _ = imported_by("info", lic_file)
    assert "model loclic (fingerprint 0123abcd), 96x64 RGB" in done.stdout


def test_the_codec_imports_nothing_of_the_pipeline(photo, checkpoint) -> None:
    done, modules = imported_by("compress", photo, "-m", checkpoint)
    assert done.returncode == 0, done.stderr
    assert "torch" in modules and "compressai" in modules  # it did code
    assert not modules & set(PIPELINE_STACK), sorted(modules & set(PIPELINE_STACK))  # decompress: the same imports
