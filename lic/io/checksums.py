"""Published checksums, written as `<algorithm>:<hex>` in params.yaml (COCO publishes MD5, DIV2K and CLIC SHA-256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lic.errors import LicError

ALGORITHMS = ("md5", "sha1", "sha256")


def parse(spec: str) -> tuple[str, str]:
    """Split `sha256:<hex>` into its algorithm and lower-case digest, rejecting unknown algorithms."""
    algorithm, sep, digest = spec.partition(":")
    if not sep or algorithm not in ALGORITHMS or not digest:
        raise LicError(f"checksum {spec!r}: write it as <algorithm>:<hex> with an algorithm in {ALGORITHMS}")
    return algorithm, digest.lower()


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (archives are tens of gigabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def matches(path: Path, spec: str) -> bool:
    """Whether the file's digest equals the one in `spec`."""
    algorithm, digest = parse(spec)
    return file_digest(path, algorithm) == digest
