"""Read the members of untrusted zip and tar archives (plain, gzip, bzip2, xz) one at a time, within a budget.

Archives here are up to ~140 GB, so members are streamed, never extracted in full: a consumer reads a member and
writes it where it belongs (lic.data.layout packs them into tar shards). Python's tarfile `data` filter is the
anchor for what is refused: only regular files are read (links, devices and sparse files are not), and names must
stay relative (no absolute paths, no `..`). On top of it, what one archive may cost is capped (ArchiveLimits):
decompressed bytes in total, bytes per member, and the decompressed / compressed ratio, so a zip or gzip bomb is
refused after at most a few megabytes instead of filling the disk. Zip and gzip check CRCs while reading, which
catches corruption in sources that publish no checksum.

Errors of the archive as a whole (not an archive, truncated headers, a bomb) raise ArchiveError, one line. Errors
inside one member's data (a bad CRC, a truncated last member) surface while that member is read, as MEMBER_ERRORS,
so the consumer can skip and report that member and go on.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

from lic.errors import LicError
from lic.params import ArchiveLimits as ArchiveLimitParams

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# Decompressors raise these on damaged data; the tar and zip readers add their own.
MEMBER_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    tarfile.TarError,
    NotImplementedError,  # a zip compression method Python lacks (deflate64)
    RuntimeError,  # an encrypted zip member
)
# Slack before the ratio is enforced, so tiny archives with a large header-to-data ratio are not refused.
RATIO_SLACK = 1 << 20


class ArchiveError(LicError):
    """An archive that cannot be used as a whole: not an archive, corrupt, truncated, or over its limits."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may cost (params: data.archive_limits)."""

    max_total_bytes: int
    max_member_bytes: int
    max_ratio: float

    @classmethod
    def from_params(cls, limits: ArchiveLimitParams) -> ArchiveLimits:
        return cls(
            max_total_bytes=int(limits.max_total_gb * 2**30),
            max_member_bytes=int(limits.max_member_mb * 2**20),
            max_ratio=limits.max_ratio,
        )


@dataclass(frozen=True)
class Member:
    """A regular file inside an archive (or on disk): its name, declared size, and how to open its bytes."""

    name: str
    size: int
    open: Callable[[], IO[bytes]]


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def members(archive: Path, limits: ArchiveLimits) -> Iterator[Member]:
    """Every regular file of a zip or tar archive, in archive order; in a tar each must be read before the next."""
    label = archive.name
    try:
        if archive.name.lower().endswith(".zip"):
            yield from _zip_members(archive, limits)
        else:
            with open(archive, "rb") as raw:
                budget = _Budget(label, limits, _Counting(raw))
                with tarfile.open(fileobj=budget.reader(), mode="r|") as tf:
                    yield from tar_members(tf, budget)
    except MEMBER_ERRORS as err:
        raise ArchiveError(f"{label}: corrupt or truncated archive ({_describe(err)})") from None


def tar_members(tf: tarfile.TarFile, budget: _Budget) -> Iterator[Member]:
    """Regular files of an open stream-mode tar (the data filter's rule: no links, devices or sparse files).

    An archive that ends inside the data of a member that was read ends here: that member's reader already failed
    (a reported skip), and nothing can follow it. tarfile keeps every header it read; they are dropped as the
    iteration goes, so a million-member tar does not hold a million TarInfo objects.
    """
    opened: list[str] = []
    while True:
        try:
            info = tf.next()
        except tarfile.ReadError as err:
            if opened and str(err) == "unexpected end of data":
                return
            raise
        tf.members.clear()
        opened.clear()
        if info is None:
            return
        if not info.isreg() or info.issparse():
            continue
        budget.check_header(info)
        yield Member(info.name, info.size, partial(_extract, tf, info, opened))


def _extract(tf: tarfile.TarFile, info: tarfile.TarInfo, opened: list[str]) -> IO[bytes]:
    opened.append(info.name)
    return tf.extractfile(info)


def nested(outer: Member, limits: ArchiveLimits) -> Iterator[Member]:
    """The members of a tar that is itself a member (ImageNet's train tar holds one tar per class).

    Their bytes are read through the outer archive's stream, so they count against its budget already.
    """
    try:
        with outer.open() as inner_file, tarfile.open(fileobj=inner_file, mode="r|") as inner:
            yield from tar_members(inner, _Budget(outer.name, limits, None))
    except MEMBER_ERRORS as err:
        raise ArchiveError(f"{outer.name}: corrupt or truncated archive ({_describe(err)})") from None


def safe_name(name: str) -> str:
    """A member name as a relative POSIX path, refusing absolute names and `..` (the data filter's rule)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    parts = tuple(part for part in parts if part != ".")
    if not parts or parts[0] == "/" or ":" in parts[0] or any(part in ("..", "") for part in parts):
        raise ArchiveError(f"archive member {name!r} names a path outside the destination; refusing the archive")
    return "/".join(parts)


def _zip_members(archive: Path, limits: ArchiveLimits) -> Iterator[Member]:
    with zipfile.ZipFile(archive) as zf:
        budget = _Budget(archive.name, limits, None)
        for info in zf.infolist():
            if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                continue
            yield Member(info.filename, info.file_size, lambda info=info: budget.zip_member(zf, info))


class _Counting:
    """A raw file that counts the compressed bytes read from it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class _Budget:
    """Decompressed bytes read from one archive, checked against its limits on every read."""

    def __init__(self, label: str, limits: ArchiveLimits, compressed: _Counting | None) -> None:
        self.label, self.limits, self.compressed, self.expanded = label, limits, compressed, 0

    def reader(self) -> _Guarded:
        """The archive's decompressed stream (gzip, bzip2 and xz recognised by their magic bytes), guarded."""
        raw = self.compressed
        head = raw.raw.peek(6)[:6] if hasattr(raw.raw, "peek") else b""
        if head.startswith(b"\x1f\x8b"):
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif head.startswith(b"BZh"):
            stream = bz2.BZ2File(raw)
        elif head.startswith(b"\xfd7zXZ\x00"):
            stream = lzma.LZMAFile(raw)  # noqa: SIM115 - closed with the tar that reads it
        else:
            stream = raw
        return _Guarded(stream, self, self._ratio_of_stream, fatal=True)

    def zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Guarded:
        """A zip member's stream; its declared ratio is checked before any byte is inflated."""
        if info.file_size > self.limits.max_ratio * info.compress_size + RATIO_SLACK:
            raise self._bomb(info.file_size, info.compress_size, info.filename)
        return _Guarded(zf.open(info), self, lambda: None)

    def check_header(self, info: tarfile.TarInfo) -> None:
        """A tar member's declared size counts against the total whether or not it is read (skipping inflates it)."""
        if self.expanded + info.size > self.limits.max_total_bytes:
            raise self._over_total()

    def add(self, count: int) -> None:
        self.expanded += count
        if self.expanded > self.limits.max_total_bytes:
            raise self._over_total()

    def _ratio_of_stream(self) -> None:
        if self.compressed is not None and self.expanded > self.limits.max_ratio * self.compressed.count + RATIO_SLACK:
            raise self._bomb(self.expanded, self.compressed.count, None)

    def _bomb(self, expanded: int, compressed: int, member: str | None) -> ArchiveError:
        where = f"member {member!r} of {self.label}" if member else self.label
        ratio = expanded / max(compressed, 1)
        return ArchiveError(
            f"{where} expands {ratio:.0f} times (data.archive_limits.max_ratio is {self.limits.max_ratio:g}); "
            "refusing a likely decompression bomb"
        )

    def _over_total(self) -> ArchiveError:
        limit_gb = self.limits.max_total_bytes / 2**30
        return ArchiveError(
            f"{self.label} decompresses to more than {limit_gb:g} GB (data.archive_limits.max_total_gb); "
            "refusing it (raise the limit if the archive is trusted and that large)"
        )


class _Guarded:
    """A decompressed stream whose every read counts against the archive's budget.

    `fatal`: the stream of a whole tar, where damage (a truncated gzip, a bad CRC) ends the archive, not one member.
    """

    def __init__(self, stream: Any, budget: _Budget, check: Callable[[], None], fatal: bool = False) -> None:
        self.stream, self.budget, self.check, self.fatal = stream, budget, check, fatal

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.stream.read(size)
        except MEMBER_ERRORS as err:
            if not self.fatal:
                raise
            raise ArchiveError(f"{self.budget.label}: corrupt or truncated archive ({_describe(err)})") from None
        self.budget.add(len(data))
        self.check()
        return data

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
