"""HTTP downloads that survive flaky links and never pass off a bad file as a good one.

Bytes go to `<name>.part`; after a dropped connection the next attempt asks for the rest with a Range request
(If-Range guards against the file having changed on the server), with exponential back-off between attempts.
Only a file whose size and published checksum match is renamed to `<name>`, so a finished name means a verified
file. A `.part` survives a failed run on purpose: the next run resumes it instead of starting again.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from lic.errors import LicError
from lic.io import checksums
from lic.io.progress import say, transferring
from lic.params import Download, KaggleMirror, RemoteFile

# Statuses worth another attempt: the server is busy or briefly broken, not refusing this request for good.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 300.0
# Small reads: bytes already received in a read that a dropped connection interrupts are lost, up to one chunk.
CHUNK = 1 << 16


class DownloadError(LicError):
    """A download that cannot succeed as configured: wrong URL, refused access, size or checksum mismatch."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _TransientError(Exception):
    """A failure another attempt may get past (dropped connection, timeout, 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts after the first, back-off base and the socket timeout (params: data.download)."""

    retries: int
    backoff_s: float
    timeout_s: float

    @classmethod
    def from_params(cls, download: Download) -> RetryPolicy:
        return cls(retries=download.retries, backoff_s=download.backoff_s, timeout_s=download.timeout_s)


@dataclass(frozen=True)
class Remote:
    """One file to download, with what is known about it in advance (size in bytes, `algo:hex` checksum).

    `name` is the local file name, for URLs whose path does not end in one (an API endpoint).
    """

    url: str
    size: int | None = None
    checksum: str | None = None
    name: str | None = None

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


def download(
    remote: Remote,
    directory: Path,
    policy: RetryPolicy,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
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
    with requests.Session() as session:
        for attempt in range(policy.retries + 1):
            try:
                _transfer(session, remote, part, policy, headers or {}, auth)
                break
            except _TransientError as err:
                if attempt == policy.retries:
                    have = _size(part)
                    then = f"run again to resume from byte {have}" if have else "check the network and the URL"
                    raise DownloadError(f"{remote.url}: gave up after {attempt + 1} attempts ({err}); {then}") from None
                delay = min(policy.backoff_s * 2**attempt, MAX_BACKOFF_S)
                say(f"{remote.filename}: {err}; retrying in {delay:g} s ({attempt + 1}/{policy.retries})")
                time.sleep(delay)
    _check(part, remote)
    os.replace(part, final)
    _discard(part)
    return final


def provenance(remote: Remote, path: Path) -> dict[str, Any]:
    """What source.json records for a downloaded file: its published checksum, or its SHA-256 to pin later."""
    checksum = remote.checksum or "sha256:" + checksums.file_digest(path, "sha256")
    return {"url": remote.url, "size": path.stat().st_size, "checksum": checksum, "published": bool(remote.checksum)}


def _transfer(
    session: requests.Session,
    remote: Remote,
    part: Path,
    policy: RetryPolicy,
    headers: Mapping[str, str],
    auth: tuple[str, str] | None,
) -> None:
    """One attempt: fetch what `part` lacks and append it; raise _TransientError when the link failed midway."""
    offset = _resumable_offset(part, remote.url)
    # identity: sizes and offsets must count the bytes on disk, not a transfer encoding's.
    request_headers = {"Accept-Encoding": "identity", **headers}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
        validator = _read_validator(part)
        if validator:
            request_headers["If-Range"] = validator
    try:
        response = session.get(
            remote.url,
            headers=request_headers,
            auth=auth,
            stream=True,
            timeout=(policy.timeout_s, policy.timeout_s),
        )
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _TransientError(f"connection failed ({type(err).__name__})") from None
    with response:
        if response.status_code == 416 and offset:
            # The server has nothing after `offset`: the part is complete, or longer than the file (changed).
            if _range_total(response) == offset:
                return
            _discard(part)
            raise _TransientError("server refused the resume offset; starting over")
        if response.status_code in RETRYABLE_STATUS:
            raise _TransientError(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise DownloadError(_refusal(remote.url, response), status=response.status_code)
        fresh = response.status_code != 206  # 200: asked for, or the server ignored Range / the file changed
        if fresh:
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        else:
            start, total = _content_range(response)
            if start != offset:
                _discard(part)
                raise _TransientError(f"server resumed at byte {start}, not {offset}; starting over")
        if remote.size is not None and total is not None and total != remote.size:
            _discard(part)
            raise DownloadError(
                f"{remote.url}: the server reports {total} bytes but params.yaml expects {remote.size}; "
                "check the URL and the size in data.sources"
            )
        if fresh:
            _write_validator(part, remote.url, response)
        _stream(response, part, offset, total, remote.filename)
    written = _size(part)
    if total is not None and written != total:
        raise _TransientError(f"connection closed at byte {written} of {total}")


def _stream(response: requests.Response, part: Path, offset: int, total: int | None, label: str) -> None:
    """Append the body to `part`, keeping every byte that arrived before a failure."""
    written = offset
    with transferring() as bar, open(part, "ab" if offset else "wb") as out:
        task = bar.add_task(label, total=total, completed=offset)
        try:
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
                written += len(chunk)
                bar.update(task, completed=written)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
            raise _TransientError(f"connection dropped at byte {written}") from None


def _check(part: Path, remote: Remote) -> None:
    """Size and checksum of the finished part; a bad part is deleted so no later run resumes garbage."""
    problem = None
    if remote.size is not None and _size(part) != remote.size:
        problem = f"{_size(part)} bytes downloaded, {remote.size} expected"
    elif remote.checksum and not checksums.matches(part, remote.checksum):
        algorithm, _ = checksums.parse(remote.checksum)
        problem = f"checksum mismatch: expected {remote.checksum}, got {algorithm}:" + checksums.file_digest(
            part, algorithm
        )
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


def _discard(part: Path) -> None:
    """Forget a partial download: its bytes and what identified their version."""
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _write_validator(part: Path, url: str, response: requests.Response) -> None:
    """Remember what identifies this version of the file, for If-Range when resuming."""
    validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
    _validator_file(part).write_text(json.dumps({"url": url, "validator": validator}))


def _read_validator(part: Path) -> str:
    return json.loads(_validator_file(part).read_text())["validator"]


def _resumable_offset(part: Path, url: str) -> int:
    """Bytes of `part` that may be resumed: none when it came from another URL (params changed)."""
    sidecar = _validator_file(part)
    if not part.exists() or not sidecar.exists() or json.loads(sidecar.read_text())["url"] != url:
        return 0
    return _size(part)
