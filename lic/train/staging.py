"""The shard set on nodes that share nothing: published once to object storage, staged per node, split by rank.

The shard stage's folder (`shards.dir`: train-NNNNN.beton, validation-NNNNN.beton, index.parquet,
checksums.json) is published to `shards.remote`, any URI pyarrow opens: `s3://bucket/prefix` (with
`?endpoint_override=http://host:port&scheme=http` for another S3 API, as `train.storage_path`), `gs://...`, or a
local or mounted folder. checksums.json goes last, so a reader that finds it finds the whole set.

Each node stages into node-local storage (`LIC_STAGE_DIR`, else `shards.stage_dir`) only what its ranks read:
the small files every rank needs (index, checksums, the validation shards) and the train shards of its ranks.
Downloads run in parallel threads, are hashed while they stream and renamed into place only when their SHA-256
matches checksums.json; a staged file is reused by every later run on the node (restarts, other lambdas) as long
as its size and recorded hash match. One lock per node and shard set, so ranks sharing a node download once.

Which train shards a rank reads: `partition` splits the shards into one group per rank, balanced by sample count
and fixed by the seed; `assign_groups` gives every node as many groups as it has ranks, preferring groups already
staged there (a restarted worker group may place its ranks on other nodes than before: each node keeps its data);
`group_of_rank` deals a node's groups to its local ranks in an order drawn from (seed, epoch), so ranks on a node
trade shards every epoch without downloading. Groups, not nodes, define the batches: a run resumed on another
placement sees the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import pyarrow.parquet as pq

from lic.errors import LicError
from lic.io.atomic import write_text

CHECKSUMS, INDEX = "checksums.json", "index.parquet"
STAGE_ENV = "LIC_STAGE_DIR"  # a node's own staging folder, set in its environment
CHUNK = 8 << 20  # bytes per read while streaming a download through the hash
DISK_MARGIN = 1 << 30  # left free on the staging disk besides the shards


@dataclass(frozen=True)
class Checksum:
    sha256: str
    bytes: int


@dataclass
class StageReport:
    """What a node's staging did: the files it downloaded and the ones it found already staged."""

    directory: Path
    downloaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    seconds: float = 0.0


def open_uri(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow's filesystem for `uri` and the path inside it (a plain path is a local folder)."""
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    except (pyarrow.ArrowInvalid, OSError) as err:
        raise LicError(f"cannot open shard storage {uri!r}: {err}") from None
    return filesystem, path.rstrip("/")


def read_checksums(text: str, where: str) -> dict[str, Checksum]:
    try:
        return {name: Checksum(str(entry["sha256"]), int(entry["bytes"])) for name, entry in json.loads(text).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise LicError(f"{where}: not a checksums.json of a shard set ({err})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def publish(directory: Path, uri: str, workers: int = 8) -> dict[str, Checksum]:
    """Upload the shard folder to `uri`: every file checksums.json lists, verified first, then checksums.json."""
    directory = Path(directory)
    try:
        checksums = read_checksums((directory / CHECKSUMS).read_text(), str(directory / CHECKSUMS))
    except FileNotFoundError:
        raise LicError(f"{directory} has no {CHECKSUMS}: run the shard stage first") from None
    for name, expected in checksums.items():
        local = directory / name
        if not local.is_file() or local.stat().st_size != expected.bytes or file_sha256(local) != expected.sha256:
            raise LicError(f"{local} does not match {CHECKSUMS}: rebuild the shards before publishing")
    filesystem, root = open_uri(uri)
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):  # object stores have no folders (S3 would get a marker)
        filesystem.create_dir(root, recursive=True)

    def upload(name: str) -> None:
        with open(directory / name, "rb") as source, filesystem.open_output_stream(f"{root}/{name}") as target:
            shutil.copyfileobj(source, target, CHUNK)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(upload, sorted(checksums)))
    upload(CHECKSUMS)  # last: its presence means the whole set is there
    return checksums


def stage_dir(configured: str | None) -> Path:
    """This node's staging folder: LIC_STAGE_DIR (each node's own setting), else `shards.stage_dir`."""
    value = os.environ.get(STAGE_ENV) or configured
    if not value:
        raise LicError(f"no node-local staging folder: set {STAGE_ENV} on every node or shards.stage_dir")
    return Path(value).expanduser().resolve()


class Stager:
    """Stages files of one published shard set into `<directory>/<set id>/` on this node."""

    def __init__(self, uri: str, directory: Path, workers: int = 8) -> None:
        self.uri, self.workers = uri, workers
        self.filesystem, self.root = open_uri(uri)
        try:
            with self.filesystem.open_input_stream(f"{self.root}/{CHECKSUMS}") as stream:
                text = stream.read().decode()
        except (FileNotFoundError, OSError) as err:
            raise LicError(f"no published shard set at {uri} ({CHECKSUMS}: {err}): run `lic publish-shards`") from None
        self.checksums = read_checksums(text, f"{uri}/{CHECKSUMS}")
        set_id = hashlib.sha256(text.encode()).hexdigest()[:16]  # the content of the whole set
        self.directory = Path(directory) / set_id
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock():  # ranks of a node construct their stagers at the same time
            if not (self.directory / CHECKSUMS).is_file():
                write_text(self.directory / CHECKSUMS, text)

    def is_staged(self, name: str) -> bool:
        """Staged and verified: right size, and the marker written after its hash matched."""
        expected = self.checksums[name]
        path, marker = self.directory / name, self.directory / f".{name}.sha256"
        return (
            path.is_file()
            and path.stat().st_size == expected.bytes
            and marker.is_file()
            and (marker.read_text() == expected.sha256)
        )

    def stage(self, names: Sequence[str]) -> StageReport:
        """Make `names` present and verified here; downloads what is missing, in parallel, under the node lock."""
        started = time.perf_counter()
        unknown = sorted(set(names) - set(self.checksums))
        if unknown:
            raise LicError(f"{self.uri} has no {', '.join(unknown)} in its {CHECKSUMS}")
        report = StageReport(self.directory)
        with self._lock():
            missing = [name for name in sorted(set(names)) if not self.is_staged(name)]
            report.reused = sorted(set(names) - set(missing))
            self._check_space(missing)
            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(self._download, missing))
            report.downloaded = missing
            report.bytes_downloaded = sum(self.checksums[name].bytes for name in missing)
        report.seconds = time.perf_counter() - started
        return report

    def _check_space(self, missing: Sequence[str]) -> None:
        needed = sum(self.checksums[name].bytes for name in missing)
        free = shutil.disk_usage(self.directory).free
        if needed + DISK_MARGIN > free:
            raise LicError(
                f"{self.directory}: staging {len(missing)} shard file(s) needs {needed / 1e9:.1f} GB plus "
                f"{DISK_MARGIN / 1e9:.1f} GB spare, but the disk has {free / 1e9:.1f} GB free: give the node a "
                f"larger local disk, or more nodes (each stages only its ranks' shards)"
            )

    def _download(self, name: str) -> None:
        expected = self.checksums[name]
        target = self.directory / name
        part = target.with_name(f".{name}.part")
        digest, size = hashlib.sha256(), 0
        try:
            with self.filesystem.open_input_stream(f"{self.root}/{name}") as source, open(part, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except OSError as err:
            part.unlink(missing_ok=True)
            raise LicError(f"downloading {self.uri}/{name}: {err}") from None
        if size != expected.bytes or digest.hexdigest() != expected.sha256:
            part.unlink(missing_ok=True)
            raise LicError(
                f"{self.uri}/{name} does not match {CHECKSUMS} ({size} bytes, sha256 {digest.hexdigest()[:12]}, "
                f"expected {expected.bytes} bytes, {expected.sha256[:12]}): republish the shard set"
            )
        os.replace(part, target)
        write_text(self.directory / f".{name}.sha256", expected.sha256)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def partition(samples: dict[int, int], groups: int, seed: int) -> list[list[int]]:
    """Shard numbers in `groups` groups of nearly equal sample counts: the largest shards first, each to the
    group with the fewest samples so far (ties broken by a seeded order), every group sorted. Needs at least one
    shard per group."""
    if len(samples) < groups:
        raise LicError(f"{len(samples)} train shard(s) cannot give each of {groups} ranks its own: write smaller "
                       "shards (shards.shard_size_mb) or train on fewer ranks")  # fmt: skip
    order = np.random.default_rng([seed]).permutation(sorted(samples))
    order = sorted(order, key=lambda shard: -samples[int(shard)])  # stable: the seeded order breaks ties
    loads, members = [0] * groups, [[] for _ in range(groups)]
    tiebreak = np.random.default_rng([seed, 1]).permutation(groups)
    for shard in order:
        group = min(range(groups), key=lambda g: (loads[g], tiebreak[g]))
        loads[group] += samples[int(shard)]
        members[group].append(int(shard))
    return [sorted(group) for group in members]


@dataclass(frozen=True)
class NodeSlots:
    """One node of the run as every rank sees it: its id, how many ranks it runs, what it has staged."""

    node: str
    ranks: int
    staged: frozenset[str]


def assign_groups(nodes: Sequence[NodeSlots], group_files: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Every group to a node with a free rank, keeping groups where their files already are: groups with the
    most staged bytes choose first; ties go to the node first in id order. The same answer on every rank."""
    if sum(node.ranks for node in nodes) != len(group_files):
        raise LicError(f"{len(group_files)} groups for {sum(node.ranks for node in nodes)} ranks")
    free = {node.node: node.ranks for node in nodes}
    assigned: dict[str, list[int]] = {node.node: [] for node in nodes}
    ordered = sorted(nodes, key=lambda node: node.node)

    def overlap(node: NodeSlots, group: int) -> int:
        return sum(1 for name in group_files[group] if name in node.staged)

    pending = sorted(range(len(group_files)), key=lambda g: (-max(overlap(n, g) for n in nodes), g))
    for group in pending:
        candidates = [node for node in ordered if free[node.node]]
        best = max(candidates, key=lambda node: (overlap(node, group), -ordered.index(node)))
        assigned[best.node].append(group)
        free[best.node] -= 1
    return {node: sorted(groups) for node, groups in assigned.items()}


def group_of_rank(node_groups: Sequence[int], local_rank: int, seed: int, epoch: int) -> int:
    """The group local rank `local_rank` of a node reads in `epoch`: the node's groups dealt in a (seed, epoch)
    order, so co-located ranks trade shards every epoch and every rank computes the same deal."""
    deal = np.random.default_rng([seed, epoch, *node_groups]).permutation(sorted(node_groups))
    return int(deal[local_rank])


def train_shard_file(shard: int) -> str:
    return f"train-{shard:05d}.beton"


def always_staged(checksums: dict[str, Any]) -> list[str]:
    """What every node needs whatever its ranks read: the index and the validation shards."""
    return sorted(name for name in checksums if name == INDEX or name.startswith("validation-"))


def train_samples(index: Path) -> dict[int, int]:
    """Samples per train shard number, from the shard set's index.parquet."""
    table = pq.read_table(index, columns=["split", "shard"]).to_pydict()
    counts: dict[int, int] = {}
    for split, shard in zip(table["split"], table["shard"], strict=True):
        if split == "train":
            counts[int(shard)] = counts.get(int(shard), 0) + 1
    return counts


@dataclass
class NodePlan:
    """A rank's view of the run's data: the staged folder (a shards.dir for the loader), every rank's group of
    train shards, the groups this rank's node holds, and what staging did."""

    directory: Path
    groups: list[list[int]]
    node_groups: list[int]
    local_rank: int
    seed: int
    report: StageReport

    def shards(self, epoch: int) -> list[int]:
        """The train shards this rank reads in `epoch`."""
        return self.groups[group_of_rank(self.node_groups, self.local_rank, self.seed, epoch)]


def plan_and_stage(
    uri: str,
    directory: Path,
    *,
    world_size: int,
    node: str,
    rank: int,
    seed: int,
    gather: Callable[[Any], list[Any]],
    workers: int = 8,
) -> NodePlan:
    """Everything a rank does before its loader: stage the shared files, split the shards into groups, agree with
    every rank (`gather`: all ranks' values in rank order, e.g. torch.distributed.all_gather_object) on which
    node reads which groups, then stage this node's groups. Ranks of a node download each file once."""
    stager = Stager(uri, directory, workers)
    shared = stager.stage(always_staged(stager.checksums))
    samples = train_samples(stager.directory / INDEX)
    groups = partition(samples, world_size, seed)
    group_files = [[train_shard_file(shard) for shard in group] for group in groups]
    staged = frozenset(name for files in group_files for name in files if stager.is_staged(name))
    everyone = gather((node, staged))
    # This rank's place among its node's ranks, by node id: Ray's local rank groups by IP address, which two
    # nodes on one host (or behind one NAT) share.
    local_rank = [other for other, _ in everyone[:rank]].count(node)
    nodes = [NodeSlots(name, sum(1 for other, _ in everyone if other == name), held)
             for name, held in dict(everyone).items()]  # fmt: skip
    node_groups = assign_groups(nodes, group_files)[node]
    report = stager.stage([name for group in node_groups for name in group_files[group]])
    report.downloaded += shared.downloaded
    report.reused += shared.reused
    report.bytes_downloaded += shared.bytes_downloaded
    report.seconds += shared.seconds
    return NodePlan(stager.directory, groups, node_groups, local_rank, seed, report)
