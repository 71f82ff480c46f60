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
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import yaml
from PIL import Image

from lic.data.archive import ArchiveLimits
from lic.data.download import DownloadPolicy
from lic.params import parse_params

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"


@dataclass
class Served:
    """What the test server holds and saw: files by URL path, misbehaviours per path, and a request log.

    The misbehaviours are those of real hostile or broken servers: a reply cut after some bytes (once, or on every
    reply), a body dripped one byte at a time, wrong or missing headers, a redirect loop.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the first reply is cut
    drop_every: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before every reply is cut
    drip_s: dict[str, float] = field(default_factory=dict)  # path -> seconds between single bytes of the body
    delay_s: dict[str, float] = field(default_factory=dict)  # path -> seconds before the body starts
    headers: dict[str, dict[str, str | None]] = field(default_factory=dict)  # path -> headers to set (None: omit)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location of a 302
    authorization: dict[str, str] = field(default_factory=dict)  # path -> required Authorization header
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header) of each GET
    heads: list[str] = field(default_factory=list)  # paths of HEAD requests
    in_flight: int = 0
    max_in_flight: int = 0  # the most GET bodies being sent at the same time
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD with single-range support (206/416), an ETag, and the misbehaviours `Served` asks for."""

    protocol_version = "HTTP/1.1"
    served: Served

    def do_HEAD(self) -> None:
        self.served.heads.append(urlparse(self.path).path)
        self._reply(head=True)

    def do_GET(self) -> None:
        self.served.requests.append((urlparse(self.path).path, self.headers.get("Range")))
        with self.served.lock:
            self.served.in_flight += 1
            self.served.max_in_flight = max(self.served.max_in_flight, self.served.in_flight)
        try:
            self._reply(head=False)
        finally:
            with self.served.lock:
                self.served.in_flight -= 1

    def _reply(self, head: bool) -> None:
        served, path = self.served, urlparse(self.path).path
        if path in served.redirects:
            return self._empty(302, {"Location": served.redirects[path]})
        required = served.authorization.get(path)
        if required and self.headers.get("Authorization") != required:
            return self._empty(401)
        body = served.files.get(path)
        if body is None:
            return self._empty(404)
        start, end = 0, len(body)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, len(body)) if match.group(2) else len(body)
            if start >= len(body):
                return self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        else:
            self.send_response(200)
        headers = {"Content-Length": str(end - start), "ETag": '"v1"', "Accept-Ranges": "bytes"}
        headers.update(served.headers.get(path, {}))
        for key, value in headers.items():
            if value is not None:
                self.send_header(key, value)
        if headers["Content-Length"] != str(end - start):
            self.close_connection = True  # the body's end is the connection's close
        self.end_headers()
        if head:
            return
        time.sleep(served.delay_s.get(path, 0.0))
        with served.lock:
            cut = served.drop_after.pop(path, None)
        cut = served.drop_every.get(path, cut)
        data = body[start:end] if cut is None else body[start : min(end, start + cut)]
        try:
            if path in served.drip_s:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(served.drip_s[path])
            else:
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up on a slow body
            self.close_connection = True
            return
        if cut is not None or self.close_connection:
            self.connection.shutdown(socket.SHUT_RDWR)  # the link drops mid-transfer (or ends the body)
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


def bilevel_png(height: int, width: int) -> bytes:
    """A black 1-bit PNG, compressed row by row: a few KB to a few hundred that declare height x width pixels."""
    compressor, row = zlib.compressobj(9), bytes(1 + -(-width // 8))
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def project_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def download_policy(**changes: object) -> DownloadPolicy:
    """The project's download policy (params: data.download) with `changes`, e.g. short timeouts for tests."""
    return replace(DownloadPolicy.from_params(parse_params(project_params()).data.download), **changes)


def archive_limits(**changes: object) -> ArchiveLimits:
    """The project's archive limits (params: data.archive_limits) with `changes`."""
    return replace(ArchiveLimits.from_params(parse_params(project_params()).data.archive_limits), **changes)


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
    for package in ("data", "io"):  # the data stages and the I/O helpers they share
        shutil.copytree(ROOT / "lic" / package, directory / "lic" / package, ignore=ignore)
    shutil.copy2(ROOT / ".gitignore", directory / ".gitignore")
    run(["git", "init", "-q"], directory)
    run([sys.executable, "-m", "dvc", "init", "-q"], directory)
    shutil.copy2(ROOT / ".dvc" / "config", directory / ".dvc" / "config")  # analytics off, the offline plot page
    shutil.copytree(ROOT / ".dvc" / "plots", directory / ".dvc" / "plots")
    return directory


def http_source_params(tmp_path: Path, files: list[dict], split: str = "train", adapter: str = "http") -> dict:
    """Project params whose active profile is one source `web` downloading `files`, with every path under tmp_path
    and retries short enough for tests."""
    params = project_params()
    data = params["data"]
    data["paths"] = {key: str(tmp_path / value) for key, value in data["paths"].items()}
    data["download"].update(retries=2, backoff_s=0.01, timeout_s=10)
    data["sources"]["web"] = {"adapter": adapter, "split": split, "license": "test", "files": files}
    data["profiles"]["test"] = ["web"]
    params["profile"] = "test"
    return params
