"""Helpers of the dataset tests: a real HTTP server on 127.0.0.1, DVC projects in temporary git repos, images."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"


@dataclass
class Served:
    """What the test server holds and saw: files by URL path, cut-offs, required Authorization, request log."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the first reply is cut
    authorization: dict[str, str] = field(default_factory=dict)  # path -> required Authorization header
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    """GET with single-range support (206/416), an ETag, and a first reply that can be cut mid-body."""

    protocol_version = "HTTP/1.1"
    served: Served

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        self.served.requests.append((path, self.headers.get("Range")))
        required = self.served.authorization.get(path)
        if required and self.headers.get("Authorization") != required:
            return self._empty(401)
        body = self.served.files.get(path)
        if body is None:
            return self._empty(404)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= len(body):
                return self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        cut = self.served.drop_after.pop(path, None)
        if cut is None:
            self.wfile.write(body[start:])
            return
        self.wfile.write(body[start : start + cut])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)  # the link drops mid-transfer
        self.close_connection = True

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@contextmanager
def http_server(served: Served) -> Iterator[Served]:
    """Serve `served` on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def photo(name: str) -> Image.Image:
    """A scikit-image sample photograph as RGB."""
    return Image.open(SKIMAGE_DATA / name).convert("RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale for 2-D, RGB for H x W x 3) written by hand: PIL cannot write 16-bit RGB."""
    height, width = values.shape[:2]
    color_type = 2 if values.ndim == 3 else 0
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def project_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(directory: Path, params: dict) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


CREDENTIALS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY")


def tool_env() -> dict[str, str]:
    """Environment for `dvc`, `python -m pipelines...` and `lic`: this venv first on PATH, no analytics, and no
    dataset credentials a developer may have exported (tests never use real ones)."""
    env = {key: value for key, value in os.environ.items() if key not in CREDENTIALS}
    env["DVC_NO_ANALYTICS"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc_project(directory: Path) -> Path:
    """A git + DVC repository holding this project's pipeline: dvc.yaml, params.yaml, pipelines/ and the code."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", "requirements.lock"):
        shutil.copy2(ROOT / name, directory / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "pipelines", directory / "pipelines", ignore=ignore)
    for name in ("__init__.py", "errors.py", "params.py"):
        (directory / "lic").mkdir(exist_ok=True)
        shutil.copy2(ROOT / "lic" / name, directory / "lic" / name)
    for package in ("data", "io"):
        shutil.copytree(ROOT / "lic" / package, directory / "lic" / package, ignore=ignore)
    shutil.copy2(ROOT / ".gitignore", directory / ".gitignore")
    run(["git", "init", "-q"], directory)
    run([sys.executable, "-m", "dvc", "init", "-q"], directory)
    return directory
