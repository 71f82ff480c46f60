"""HTTP downloads that survive flaky links and hostile servers, and never pass off a bad file as a good one.

Bytes go to `<name>.part`, with a sidecar `<name>.part.json` recording which byte ranges have arrived. Large files
are fetched as several parts over parallel connections (HTTP Range); a dropped connection resumes each part where
it stopped (If-Range with the server's ETag or Last-Modified, so a file that changed is not spliced), with
exponential back-off between attempts. Every byte that arrived is kept: reads return whatever the socket has
(`read1`), so a reply cut after a few kilobytes still moves the download forward.

What an untrusted server can cost is bounded: each transfer has a known size before the body is read (params, a
pin, or the server's Content-Length) and is cut at it; a connection slower than the minimum speed over a window
is dropped and retried; every attempt of a file together has a deadline. Every transport failure ends as one
DownloadError line. Only a file whose size and checksum match (the published one, or the SHA-256 its first fetch
pinned, see `Pins`) is renamed to `<name>`, so a finished name means a verified file.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests
import urllib3

from lic.errors import LicError
from lic.io import checksums
from lic.io.atomic import write_text
from lic.io.progress import say, transferring
from lic.params import Download, KaggleMirror, RemoteFile

# Statuses worth another attempt: the server is busy or briefly broken, not refusing this request for good.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 300.0
CHUNK = 1 << 16
_PINNED = "pinned in {} when it was first fetched; if the source changed on purpose, delete its entry there"
# The sidecar is rewritten after this many new bytes: what a killed run loses and must fetch again.
SAVE_EVERY = 8 << 20
# Failures of the link or of the server's framing: another attempt may get past them.
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


class DownloadError(LicError):
    """A download that cannot succeed as configured: wrong URL, refused access, size or checksum mismatch."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _StoppedError(DownloadError):
    """Another download of the same batch failed; this one stopped early and stays resumable."""


class _TransientError(Exception):
    """A failure another attempt may get past (dropped connection, timeout, 5xx, too slow)."""


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard to try and how much a server may cost (params: data.download).

    `retries` are attempts after the first; `timeout_s` is the connect and read timeout of one request;
    `deadline_s` bounds all attempts of one file together; a connection that delivers less than
    `min_speed_kib_s` over `speed_window_s` is dropped. Files of at least two `part_mb` parts are fetched over up to
    `connections` ranged requests at once; `files_at_once` files run at the same time.
    """

    retries: int
    backoff_s: float
    timeout_s: float
    deadline_s: float
    min_speed_kib_s: float
    speed_window_s: float
    files_at_once: int
    connections: int
    part_mb: float

    @classmethod
    def from_params(cls, download: Download) -> DownloadPolicy:
        return cls(**{name: getattr(download, name) for name in cls.__dataclass_fields__})

    @property
    def part_bytes(self) -> int:
        return max(1, int(self.part_mb * 2**20))


@dataclass(frozen=True)
class Remote:
    """One file to download, with what is known about it in advance (size in bytes, `algo:hex` checksum).

    `name` is the local file name, for URLs whose path does not end in one (an API endpoint). `pinned_in` names the
    pins file when the checksum and size come from it rather than params.yaml. Headers and credentials never print.
    """

    url: str
    size: int | None = None
    checksum: str | None = None
    name: str | None = None
    pinned_in: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_params(cls, entry: RemoteFile | KaggleMirror) -> Remote:
        if isinstance(entry, KaggleMirror):
            return cls(url=entry.url, name=entry.name)
        return cls(url=entry.url, size=entry.size, checksum=entry.checksum)

    @property
    def filename(self) -> str:
        name = self.name or Path(unquote(urlparse(self.url).path)).name
        if not name:
            raise LicError(f"{self.url}: the URL names no file; give one with `name:`")
        return name


class Pins:
    """The SHA-256 and size of each download whose source publishes no checksum, recorded by its first fetch.

    Trust on first use: Vimeo-90K and Kodak publish no checksums, so the first fetch writes what it received to
    the pins file (params: data.paths.pins, committed with the code); every later download of that URL must match
    it, or it is refused. To accept a source that changed on purpose, delete its entry and fetch again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._pins: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except FileNotFoundError:
            self._pins = {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LicError(f"{self.path}: not a pins file ({err}); restore it from git") from None

    def apply(self, remote: Remote) -> Remote:
        """`remote` with the pinned checksum and size where params.yaml gives no checksum."""
        pin = self._pins.get(remote.url)
        if remote.checksum or pin is None:
            return remote
        return replace(remote, checksum=f"sha256:{pin['sha256']}", size=int(pin["size"]), pinned_in=str(self.path))

    def record(self, remote: Remote, path: Path) -> None:
        """Pin a verified download that had neither a published nor a pinned checksum."""
        if remote.checksum:
            return
        with self._lock:
            self._pins[remote.url] = {"sha256": checksums.file_digest(path, "sha256"), "size": path.stat().st_size}
            write_text(self.path, json.dumps(self._pins, indent=2, sort_keys=True) + "\n")
        say(f"{remote.filename}: no published checksum; pinned its SHA-256 in {self.path} (commit it)")


def download_all(remotes: Sequence[Remote], directory: Path, policy: DownloadPolicy) -> list[Path]:
    """Download every remote, `policy.files_at_once` at a time, under one progress display; in order.

    When one fails (or the user interrupts) the others stop at their next read, keeping what they received for the
    next run.
    """
    names = [remote.filename for remote in remotes]
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:
        raise LicError(f"downloads share the file name {shared[0]!r}; give one of them a `name:` in data.sources")
    stop = threading.Event()
    with transferring() as bar:
        jobs = [partial(download, remote, directory, policy, bar, stop) for remote in remotes]
        outcomes = _run_all(jobs, policy.files_at_once, stop, stops_others=lambda err: True)
    errors = [err for err in outcomes if isinstance(err, BaseException)]
    if errors:
        raise next((err for err in errors if not isinstance(err, _StoppedError)), errors[0])
    return outcomes


def _run_all(
    jobs: Sequence[Callable[[], Any]],
    workers: int,
    stop: threading.Event,
    stops_others: Callable[[Exception], bool],
) -> list[Any]:
    """Each job's result or exception, `workers` at a time in threads.

    A failure for which `stops_others` is true, or an interrupt (Ctrl-C) of the waiting thread, sets `stop`, which
    the jobs check at every read, so no thread keeps downloading after the run has failed.
    """
    pool = ThreadPoolExecutor(max(1, min(workers, len(jobs) or 1)))
    try:
        futures = [pool.submit(job) for job in jobs]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception as err:
                if stops_others(err):
                    stop.set()
                outcomes.append(err)
        return outcomes
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)


def download(
    remote: Remote,
    directory: Path,
    policy: DownloadPolicy,
    bar: Any = None,
    stop: threading.Event | None = None,
) -> Path:
    """Download `remote` into `directory` and return the verified file; resume what an earlier run left."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / remote.filename
    if final.exists():
        if _verified(final, remote):
            say(f"{final.name}: already downloaded and verified")
            return final
        final.unlink()
    part = final.with_name(final.name + ".part")
    transfer = _Transfer(remote, part, policy, stop or threading.Event(), time.monotonic() + policy.deadline_s)
    with _progress(bar) as shown:
        transfer.task = (shown, shown.add_task(remote.filename, total=None))
        for attempt in range(policy.retries + 1):
            try:
                transfer.attempt()
                break
            except _TransientError as err:
                have = transfer.received()
                if attempt == policy.retries:
                    then = f"run again to resume from {have} bytes" if have else "check the network and the URL"
                    raise DownloadError(f"{remote.url}: gave up after {attempt + 1} attempts ({err}); {then}") from None
                delay = min(policy.backoff_s * 2**attempt, MAX_BACKOFF_S, max(0.0, transfer.remaining_s()))
                say(f"{remote.filename}: {err}; retrying in {delay:g} s ({attempt + 1}/{policy.retries})")
                time.sleep(delay)
    _check(part, remote)
    os.replace(part, final)
    _discard(part)
    return final


def remote_size(remote: Remote, policy: DownloadPolicy) -> int | None:
    """The size the server announces for `remote`, for the disk preflight: HEAD, or the headers of a GET whose body
    is not read when the server does not answer HEAD (405, 501)."""
    options = {
        "headers": {"Accept-Encoding": "identity", **remote.headers},
        "auth": remote.auth,
        "allow_redirects": True,
        "timeout": (policy.timeout_s, policy.timeout_s),
    }
    try:
        response = requests.head(remote.url, **options)
        if response.status_code in (405, 501):
            response = requests.get(remote.url, stream=True, **options)
        with response:
            if response.status_code >= 400:
                raise DownloadError(_refusal(remote.url, response), status=response.status_code)
            return _content_length(remote.url, response)
    except TRANSIENT_ERRORS as err:
        raise DownloadError(f"{remote.url}: cannot reach the server ({type(err).__name__})") from None
    except requests.RequestException as err:
        raise DownloadError(_request_error(remote.url, err)) from None


def pending_bytes(remote: Remote, directory: Path, size: int) -> int:
    """Bytes still to download of a `size`-byte remote: what an earlier run's `.part` lacks, 0 when it is done."""
    final = directory / remote.filename
    if final.exists() and final.stat().st_size == size:
        return 0
    state = _State.load(final.with_name(final.name + ".part"), remote.url)
    return size - (state.received() if state else 0)


def provenance(remote: Remote, path: Path) -> dict[str, Any]:
    """What source.json records for a downloaded file: its checksum and whether it is published or pinned."""
    checksum = remote.checksum or "sha256:" + checksums.file_digest(path, "sha256")
    published = bool(remote.checksum) and not remote.pinned_in
    return {"url": remote.url, "size": path.stat().st_size, "checksum": checksum, "published": published}


@dataclass
class _Part:
    """Bytes [start, end) of the file; `done` of them, from `start`, are on disk."""

    start: int
    end: int
    done: int = 0

    @property
    def complete(self) -> bool:
        return self.start + self.done >= self.end


@dataclass
class _State:
    """What the sidecar records: the URL, the validator for If-Range, the file's total size and its parts."""

    url: str
    validator: str
    total: int
    parts: list[_Part]

    @classmethod
    def load(cls, part: Path, url: str) -> _State | None:
        """The state of an earlier run's `.part`, or None when there is none or it belongs to another URL."""
        sidecar = _sidecar(part)
        try:
            raw = json.loads(sidecar.read_text())
            state = cls(raw["url"], raw["validator"], int(raw["total"]), [_Part(*p) for p in raw["parts"]])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return state if state.url == url and part.exists() else None

    def save(self, part: Path) -> None:
        parts = [[p.start, p.end, p.done] for p in self.parts]
        write_text(_sidecar(part), json.dumps({"url": self.url, "validator": self.validator, "total": self.total,
                                               "parts": parts}))  # fmt: skip

    def received(self) -> int:
        return sum(p.done for p in self.parts)


class _Transfer:
    """One file's download across attempts: the first request decides the parts, later ones fill them."""

    def __init__(self, remote: Remote, part: Path, policy: DownloadPolicy, stop: threading.Event, deadline: float):
        self.remote, self.part, self.policy, self.stop, self.deadline = remote, part, policy, stop, deadline
        self.state = _State.load(part, remote.url)
        self.lock = threading.Lock()
        self.restart = threading.Event()  # a reply showed the file changed: the parts so far are worthless
        self.abort = threading.Event()  # a part failed or the user interrupted: the other parts stop too
        self.unsaved = 0
        self.task: Any = None

    def received(self) -> int:
        return self.state.received() if self.state else 0

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def attempt(self) -> None:
        """Fetch what is missing over parallel connections; raise _TransientError when one failed (bytes kept)."""
        self.restart.clear()
        self.abort.clear()
        first = self._first_request() if self.state is None else None
        todo = [piece for piece in self.state.parts if not piece.complete]
        self._show()
        jobs = [partial(self._fetch_range, piece) for piece in todo]
        if first is not None:
            jobs[0] = partial(self._stream_reply, first, self.state.parts[0])
        outcomes = _run_all(jobs, self.policy.connections, self.abort, lambda err: not isinstance(err, _TransientError))
        errors = [err for err in outcomes if isinstance(err, BaseException)]
        if self.restart.is_set():
            self.state = None
            _discard(self.part)
            raise _TransientError("the server's file changed or it ignored a ranged request; starting over")
        self.state.save(self.part)
        if errors:  # the cause first: a fatal error before the parts it stopped, before transient ones
            raise min(errors, key=lambda err: (isinstance(err, _TransientError), isinstance(err, _StoppedError)))

    def _first_request(self) -> tuple[requests.Session, requests.Response]:
        """GET without Range: learn the size and validator and plan the parts; the reply then fills the first."""
        session = requests.Session()
        try:
            response = self._get(session, {})
            if response.status_code != 200:
                response.close()
                raise _TransientError(f"HTTP {response.status_code} to a request for the whole file")
            total = _content_length(self.remote.url, response)
            if total is None:
                total = self.remote.size
            if total is None:
                response.close()
                raise DownloadError(
                    f"{self.remote.url}: the server announces no size and params.yaml gives none; add `size:` "
                    "or `checksum:` to the source's entry in data.sources"
                )
            self._check_total(total, response)
        except BaseException:
            session.close()
            raise
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
        ranged = response.headers.get("Accept-Ranges", "").lower() == "bytes" and self.policy.connections > 1
        count = max(1, min(self.policy.connections, total // self.policy.part_bytes)) if ranged else 1
        bounds = [total * i // count for i in range(count + 1)]
        _discard(self.part)
        os.close(os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644))
        self.state = _State(self.remote.url, validator, total, [_Part(a, b) for a, b in itertools.pairwise(bounds)])
        self.state.save(self.part)
        return session, response

    def _stream_reply(self, opened: tuple[requests.Session, requests.Response], piece: _Part) -> None:
        session, response = opened
        with session, response:
            self._stream(response, piece)

    def _fetch_range(self, piece: _Part) -> None:
        """One ranged request for the rest of `piece`."""
        start = piece.start + piece.done
        last = "" if piece.end == self.state.total else str(piece.end - 1)
        headers = {"Range": f"bytes={start}-{last}"}
        if self.state.validator:
            headers["If-Range"] = self.state.validator
        with requests.Session() as session, self._get(session, headers) as response:
            if response.status_code == 416 and _range_total(response) == self.state.total == start:
                return
            if response.status_code != 206:  # 200: ranges ignored or the file changed (If-Range); 416: it shrank
                self.restart.set()
                return
            begin, total = _content_range(response)
            if begin != start or total not in (None, self.state.total):
                raise _TransientError(f"the server resumed at byte {begin} of {total}, not {start}")
            self._stream(response, piece)

    def _get(self, session: requests.Session, headers: Mapping[str, str]) -> requests.Response:
        # identity: sizes and offsets must count the bytes on disk, not a transfer encoding's
        request_headers = {"Accept-Encoding": "identity", **self.remote.headers, **headers}
        read_timeout = max(0.1, min(self.policy.timeout_s, self.remaining_s()))
        if self.remaining_s() <= 0:
            raise self._past_deadline()
        try:
            response = session.get(
                self.remote.url,
                headers=request_headers,
                auth=self.remote.auth,
                stream=True,
                timeout=(self.policy.timeout_s, read_timeout),
            )
        except TRANSIENT_ERRORS as err:
            raise _TransientError(f"connection failed ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise DownloadError(_request_error(self.remote.url, err)) from None
        if response.status_code in RETRYABLE_STATUS:
            response.close()
            raise _TransientError(f"HTTP {response.status_code}")
        if response.status_code >= 400 and response.status_code != 416:
            response.close()
            raise DownloadError(_refusal(self.remote.url, response), status=response.status_code)
        return response

    def _stream(self, response: requests.Response, piece: _Part) -> None:
        """Write the body into `piece` at its offset, every byte as it arrives, until the piece is complete."""
        policy = self.policy
        floor = policy.min_speed_kib_s * 1024 * policy.speed_window_s
        window_start, window_bytes = time.monotonic(), 0
        fd = os.open(self.part, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            while not piece.complete:
                if self.stop.is_set():
                    raise _StoppedError(f"{self.remote.url}: stopped because another download failed")
                if self.restart.is_set():
                    return
                if self.abort.is_set():
                    raise _StoppedError(f"{self.remote.url}: stopped with the other parts of the download")
                try:
                    data = response.raw.read1(min(CHUNK, piece.end - piece.start - piece.done), decode_content=False)
                except TRANSIENT_ERRORS as err:
                    raise _TransientError(f"connection dropped at byte {piece.start + piece.done}") from err
                if not data:
                    raise _TransientError(f"connection closed at byte {piece.start + piece.done} of {piece.end}")
                try:
                    os.pwrite(fd, data, piece.start + piece.done)
                except OSError as err:
                    raise DownloadError(f"{self.part}: cannot write the download ({err.strerror})") from None
                self._advance(piece, len(data))
                now = time.monotonic()
                window_bytes += len(data)
                if now > self.deadline:
                    raise self._past_deadline()
                if now - window_start >= policy.speed_window_s:
                    if window_bytes < floor:
                        raise _TransientError(
                            f"slower than {policy.min_speed_kib_s:g} KiB/s over {policy.speed_window_s:g} s"
                        )
                    window_start, window_bytes = now, 0
        finally:
            os.close(fd)

    def _advance(self, piece: _Part, count: int) -> None:
        with self.lock:
            piece.done += count
            self.unsaved += count
            if self.unsaved >= SAVE_EVERY:
                self.state.save(self.part)
                self.unsaved = 0
        shown, task = self.task
        shown.update(task, advance=count)

    def _show(self) -> None:
        shown, task = self.task
        shown.update(task, total=self.state.total, completed=self.state.received())

    def _check_total(self, total: int, response: requests.Response) -> None:
        if self.remote.size is not None and total != self.remote.size:
            response.close()
            if self.remote.pinned_in:
                raise DownloadError(f"{self.remote.url}: the server reports {total} bytes, not the {self.remote.size} "
                                    f"{_PINNED.format(self.remote.pinned_in)}")  # fmt: skip
            raise DownloadError(
                f"{self.remote.url}: the server reports {total} bytes but params.yaml expects {self.remote.size}; "
                "check the URL and the size in data.sources"
            )

    def _past_deadline(self) -> DownloadError:
        return DownloadError(
            f"{self.remote.url}: the deadline of {self.policy.deadline_s:g} s (data.download.deadline_s) passed "
            f"with {self.received()} bytes received; run again to resume"
        )


@contextmanager
def _progress(bar: Any) -> Iterator[Any]:
    if bar is not None:
        yield bar
        return
    with transferring() as own:
        yield own


def _content_length(url: str, response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    if not re.fullmatch(r"\d{1,19}", value.strip()):
        raise DownloadError(f"{url}: the server sent an invalid Content-Length {value!r}")
    return int(value)


def _check(part: Path, remote: Remote) -> None:
    """Size and checksum of the finished part; a bad part is deleted so no later run resumes garbage."""
    problem = None
    if remote.size is not None and _size(part) != remote.size:
        problem = f"{_size(part)} bytes downloaded, {remote.size} expected"
    elif remote.checksum and not checksums.matches(part, remote.checksum):
        algorithm, _ = checksums.parse(remote.checksum)
        got = f"{algorithm}:" + checksums.file_digest(part, algorithm)
        problem = f"checksum mismatch: expected {remote.checksum}, got {got}"
        if remote.pinned_in:
            problem += f" {_PINNED.format(remote.pinned_in)}"
    if problem:
        _discard(part)
        raise DownloadError(f"{remote.url}: {problem}; the download was deleted, nothing was put in place")


def _verified(path: Path, remote: Remote) -> bool:
    if remote.size is not None and _size(path) != remote.size:
        return False
    return not remote.checksum or checksums.matches(path, remote.checksum)


def _refusal(url: str, response: requests.Response) -> str:
    status = f"HTTP {response.status_code} {response.reason or ''}".strip()
    if response.status_code == 404:
        return f"{url}: {status}: the file is not there; check the URL in params.yaml (data.sources)"
    if response.status_code in (401, 403):
        return f"{url}: {status}: access denied; this source needs credentials or accepted terms"
    return f"{url}: {status}"


def _request_error(url: str, err: requests.RequestException) -> str:
    if isinstance(err, requests.TooManyRedirects):
        return f"{url}: too many redirects (a redirect loop on the server); check the URL in params.yaml"
    return f"{url}: cannot be downloaded ({type(err).__name__}: {err})"


def _content_range(response: requests.Response) -> tuple[int, int | None]:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        raise _TransientError("206 reply without a usable Content-Range")
    total = match.group(2)
    return int(match.group(1)), None if total == "*" else int(total)


def _range_total(response: requests.Response) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    """Forget a partial download: its bytes and the record of which ranges arrived."""
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)
