"""The raw data layout that fetch writes and the manifest reads: a few large objects per source, not millions of files.

    data/raw/<source>/train-00000.tar, train-00001.tar, ...   training images, uncompressed POSIX tar shards of
                                                              about data.archive_shard_mb each; member names keep
                                                              the source's relative path (skimage/brick.png)
    data/raw/<source>/eval/...                                evaluation images as loose files, opened by path
    data/raw/<source>/source.json                             provenance, licences, and per shard its bytes,
                                                              SHA-256 and members (name, size, data offset)

DVC hashes, caches and pushes each file of an output, so 1.47 M loose images cost about a day to commit and push;
as ~1 GB shards the same images are a few hundred objects. Shards are written by streaming members straight from
the downloaded archives (read a member, write a member), so nothing is ever extracted in full. They are
deterministic (fixed owner, mode and mtime; archive order), so the same inputs give the same DVC hashes.

Licences in source.json's `licenses` are keyed `<split>/<name>`: `train/<member>` for a shard member,
`eval/<path under eval/>` for a loose file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tarfile
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import IO, Any

from lic.data.archive import MEMBER_ERRORS, ArchiveError, ArchiveLimits, Member, members, safe_name
from lic.errors import LicError
from lic.io import checksums
from lic.io.progress import say

EVAL_DIR = "eval"
SHARD_GLOB = "train-*.tar"
CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = bytes(2 * BLOCK)


def shard_name(index: int) -> str:
    return f"train-{index:05d}.tar"


class CorruptMemberError(Exception):
    """A member whose bytes could not be read in full; nothing of it was kept."""


class Placement:
    """Where a source's images go while fetch@<source> runs in its staging folder.

    Training images are appended to tar shards, evaluation images written as loose files. Every name is checked
    once for the source as a whole: a name that would land outside the folder, or that appears twice, refuses the
    source (which copy would be the real one?); a member over the size cap or with damaged bytes is skipped and
    reported in source.json, and the rest of the source goes on.
    """

    def __init__(self, staging: Path, shard_bytes: int, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.sinks = {"train": _TarShards(staging, shard_bytes), "eval": _LooseFiles(staging / EVAL_DIR)}
        self.names: set[str] = set()
        self.skipped: list[dict[str, str]] = []

    def add_file(self, split: str, name: str, path: Path) -> bool:
        """Place a file from disk (a shipped sample, a team's folder) as `name`; False when it was skipped."""
        member = Member(name, path.stat().st_size, partial(open, path, "rb"))
        return self._add(split, member, name, origin=str(path.parent))

    def add_archive(self, split: str, archive: Path, select: Callable[[str], str | None]) -> int:
        """Place each member of `archive` that `select` maps to a name; return how many were placed."""
        return self.add_members(split, members(archive, self.limits), select, archive.name)

    def add_members(
        self, split: str, source: Iterable[Member], select: Callable[[str], str | None], origin: str
    ) -> int:
        count = 0
        for member in source:
            name = select(member.name)
            if name is not None:
                count += self._add(split, member, name, origin)
        return count

    def close(self) -> dict[str, Any]:
        """Finish the shards; what source.json records about the placed images."""
        shards = self.sinks["train"].close()
        if self.skipped:
            say(f"skipped {len(self.skipped)} damaged or oversized members (listed in source.json)")
        return {"shards": shards, "eval_files": self.sinks["eval"].count, "skipped": self.skipped}

    def _add(self, split: str, member: Member, name: str, origin: str) -> bool:
        name = safe_name(name)
        if f"{split}/{name}" in self.names:
            raise ArchiveError(f"{origin}: {name!r} appears twice in the source; refusing an ambiguous archive")
        self.names.add(f"{split}/{name}")
        if member.size > self.limits.max_member_bytes:
            limit_mb = self.limits.max_member_bytes / 2**20
            reason = f"{member.size} bytes, over data.archive_limits.max_member_mb {limit_mb:g}"
            return self._skip(origin, member, reason)
        try:
            self.sinks[split].add(name, member)
        except CorruptMemberError as err:
            return self._skip(origin, member, str(err))
        return True

    def _skip(self, origin: str, member: Member, reason: str) -> bool:
        self.skipped.append({"archive": origin, "member": member.name, "reason": reason})
        say(f"{origin}: skipped {member.name} ({reason})")
        return False


def _copy(member: Member, out: IO[bytes], target: Path) -> None:
    """Copy a member's bytes, read to the end (so zip checks its CRC); damaged or short data is CorruptMemberError.

    Read errors are the member's fault and become CorruptMemberError; a write error (a full disk) is the stage's
    and ends it with one line.
    """
    copied = 0
    try:
        src = member.open()
    except MEMBER_ERRORS as err:
        raise CorruptMemberError(f"unreadable ({type(err).__name__}: {err})") from None
    with src:
        while True:
            try:
                chunk = src.read(CHUNK)
            except MEMBER_ERRORS as err:
                raise CorruptMemberError(f"damaged data ({type(err).__name__}: {err})") from None
            if not chunk:
                break
            copied += len(chunk)
            if copied > member.size:
                raise CorruptMemberError(f"longer than its declared {member.size} bytes")
            _write(out, chunk, target)
    if copied < member.size:
        raise CorruptMemberError(f"truncated: {copied} of {member.size} bytes")


def _write(out: IO[bytes], data: bytes, target: Path) -> None:
    try:
        out.write(data)
    except OSError as err:
        raise LicError(f"{target}: cannot write the raw data ({err.strerror})") from None


class _TarShards:
    """Training images appended to `train-NNNNN.tar` shards; a new shard starts when the next member would not fit."""

    def __init__(self, folder: Path, shard_bytes: int) -> None:
        self.folder, self.shard_bytes = folder, max(1, shard_bytes)
        self.records: list[dict[str, Any]] = []
        self.out: IO[bytes] | None = None
        self.path = folder  # the shard being written, once there is one
        self.members: list[dict[str, Any]] = []

    def add(self, name: str, member: Member) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = member.size, 0o644, 0, "", ""
        header = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        entry = len(header) + member.size + (-member.size) % BLOCK
        if self.out is None or (self.members and self.out.tell() + entry + len(END_OF_ARCHIVE) > self.shard_bytes):
            self._next_shard()
        start = self.out.tell()
        _write(self.out, header, self.path)
        try:
            _copy(member, self.out, self.path)
        except CorruptMemberError:
            self.out.seek(start)
            self.out.truncate()
            raise
        _write(self.out, bytes((-member.size) % BLOCK), self.path)
        self.members.append({"name": name, "size": member.size, "offset": start + len(header)})

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.records

    def _next_shard(self) -> None:
        self._finish()
        path = self.path = self.folder / shard_name(len(self.records))
        self.out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb")

    def _finish(self) -> None:
        if self.out is None:
            return
        path = self.path
        if not self.members:  # every member of this shard was skipped
            self.out.close()
            path.unlink()
        else:
            _write(self.out, END_OF_ARCHIVE, path)
            try:
                self.out.flush()
                os.fsync(self.out.fileno())
            except OSError as err:
                raise LicError(f"{path}: cannot write the raw data ({err.strerror})") from None
            self.out.close()
            self.records.append(
                {
                    "file": path.name,
                    "bytes": path.stat().st_size,
                    "sha256": checksums.file_digest(path, "sha256"),
                    "members": self.members,
                }
            )
        self.out, self.members = None, []


class _LooseFiles:
    """Evaluation images as files under `root`, created without following any link that is already there."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0

    def add(self, name: str, member: Member) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with os.fdopen(create_beneath(self.root, name), "wb") as out:
            try:
                _copy(member, out, self.root / name)
            except CorruptMemberError:
                (self.root / name).unlink()
                raise
        self.count += 1


def create_beneath(root: Path, name: str) -> int:
    """A new file `root/name` opened for writing, refusing to pass through a link or to replace anything.

    Each folder is opened relative to the previous one with O_NOFOLLOW, and the file with O_CREAT | O_EXCL |
    O_NOFOLLOW, so a symlink planted in the destination (or raced in) is never followed.
    """
    *folders, filename = safe_name(name).split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o755, dir_fd=fd)
            try:
                child = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                message = f"{root / name}: {folder!r} is a link or a file; refusing to write through it"
                raise ArchiveError(message) from None
            os.close(fd)
            fd = child
        try:
            return os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
        except FileExistsError:
            message = f"{root / name} already exists (a duplicate name or a link); refusing to replace it"
            raise ArchiveError(message) from None
    finally:
        os.close(fd)
