"""Staging the shard set on nodes that share nothing (lic.train.staging), on fake shard files laid out as the shard
stage writes them (contracts: train-NNNNN.beton, validation-NNNNN.beton, index.parquet, checksums.json): publish,
verified parallel downloads, reuse, the disk check, balanced groups, and which node reads which group."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lic.errors import LicError
from lic.train import staging
from lic.train.staging import (
    NodeSlots,
    Stager,
    assign_groups,
    group_of_rank,
    partition,
    plan_and_stage,
    publish,
    train_shard_file,
)
from tests.data_support import project_params
from tests.servers import moto_server

SAMPLES = {0: 40, 1: 35, 2: 30, 3: 30, 4: 20, 5: 10}  # train shard -> images in it


def fake_shard_set(directory: Path, samples: dict[int, int] = SAMPLES) -> Path:
    """A shard folder whose .beton files are random bytes (1 kB per image): staging never parses them."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {"file": [], "split": [], "shard": [], "row": []}
    files = {train_shard_file(shard): count for shard, count in samples.items()} | {"validation-00000.beton": 2}
    for name, count in files.items():
        (directory / name).write_bytes(rng.bytes(1000 * count))
        split, shard = ("validation", 0) if name.startswith("validation") else ("train", int(name[6:11]))
        for row in range(count):
            rows["file"].append(name)
            rows["split"].append(split)
            rows["shard"].append(shard)
            rows["row"].append(row)
    pq.write_table(pa.table(rows), directory / "index.parquet")
    checksums = {
        path.name: {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
        for path in sorted(directory.iterdir())
    }
    (directory / "checksums.json").write_text(json.dumps(checksums, indent=1))
    return directory


@pytest.fixture
def published(tmp_path) -> tuple[Path, Path]:
    """The fake set, and the folder it is published to (a local 'object store')."""
    shards = fake_shard_set(tmp_path / "shards")
    remote = tmp_path / "bucket" / "shards"
    publish(shards, str(remote))
    return shards, remote


def test_staging_downloads_only_the_named_files_verified_then_reuses_them(published, tmp_path) -> None:
    shards, remote = published
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in shards.iterdir())
    names = [train_shard_file(1), train_shard_file(4)]
    report = Stager(str(remote), tmp_path / "node-a").stage(names)
    assert report.downloaded == names and report.reused == [] and report.bytes_downloaded == 55_000
    for name in names:
        assert (report.directory / name).read_bytes() == (shards / name).read_bytes()
    assert {p.name for p in report.directory.iterdir() if not p.name.startswith(".")} == {*names, "checksums.json"}

    again = Stager(str(remote), tmp_path / "node-a").stage([*names, train_shard_file(2)])  # a restart, a lambda
    assert again.downloaded == [train_shard_file(2)] and again.reused == names

    (report.directory / names[0]).write_bytes(b"truncated")  # damaged on the node: fetched again
    assert Stager(str(remote), tmp_path / "node-a").stage(names).downloaded == [names[0]]


def test_a_corrupt_download_is_refused_and_leaves_nothing_behind(published, tmp_path) -> None:
    _, remote = published
    name = train_shard_file(3)
    data = bytearray((remote / name).read_bytes())
    data[100] ^= 0xFF
    (remote / name).write_bytes(bytes(data))
    stager = Stager(str(remote), tmp_path / "node")
    with pytest.raises(LicError, match=r"does not match checksums\.json.*republish"):
        stager.stage([name])
    assert not stager.is_staged(name) and not any(p.name.startswith(f".{name}") for p in stager.directory.iterdir())


def test_a_disk_too_small_is_a_clear_error_before_any_download(published, tmp_path, monkeypatch) -> None:
    _, remote = published
    monkeypatch.setattr(staging, "DISK_MARGIN", 1 << 62)
    stager = Stager(str(remote), tmp_path / "node")
    with pytest.raises(LicError, match=r"needs 0\.0 GB .* free: give the node a larger local disk"):
        stager.stage([train_shard_file(0)])
    assert not (stager.directory / train_shard_file(0)).exists()


def test_publishing_refuses_a_folder_that_does_not_match_its_checksums(tmp_path) -> None:
    shards = fake_shard_set(tmp_path / "shards")
    (shards / train_shard_file(2)).write_bytes(b"changed")
    with pytest.raises(LicError, match=r"does not match checksums\.json"):
        publish(shards, str(tmp_path / "remote"))
    with pytest.raises(LicError, match="no published shard set"):
        Stager(str(tmp_path / "remote"), tmp_path / "node")


def test_partition_is_balanced_complete_and_seeded() -> None:
    groups = partition(SAMPLES, 3, seed=1)
    assert sorted(shard for group in groups for shard in group) == sorted(SAMPLES)
    loads = [sum(SAMPLES[shard] for shard in group) for group in groups]
    assert max(loads) - min(loads) <= max(SAMPLES.values()) and sum(loads) == 165
    assert partition(SAMPLES, 3, seed=1) == groups
    many = {shard: 10 for shard in range(12)}  # equal shards: the seed decides who gets which
    assert partition(many, 4, seed=1) != partition(many, 4, seed=2)
    assert all(len(group) == 3 for group in partition(many, 4, seed=1))
    with pytest.raises(LicError, match="cannot give each of 7 ranks"):
        partition(SAMPLES, 7, seed=1)


def test_groups_stay_on_the_nodes_that_staged_them_whatever_the_rank_order() -> None:
    files = [["a", "b"], ["c"], ["d", "e"], ["f"]]
    fresh = assign_groups([NodeSlots("n2", 2, frozenset()), NodeSlots("n1", 2, frozenset())], files)
    assert fresh == {"n1": [0, 1], "n2": [2, 3]}  # nothing staged: node id order
    held = [NodeSlots("n2", 2, frozenset("abc")), NodeSlots("n1", 2, frozenset("def"))]
    assert assign_groups(held, files) == {"n2": [0, 1], "n1": [2, 3]}
    assert assign_groups(list(reversed(held)), files) == {"n2": [0, 1], "n1": [2, 3]}
    partly = [NodeSlots("n1", 1, frozenset("c")), NodeSlots("n2", 3, frozenset())]
    assert assign_groups(partly, files) == {"n1": [1], "n2": [0, 2, 3]}


def test_ranks_of_a_node_trade_its_groups_every_epoch() -> None:
    node_groups = [3, 5, 6, 9]
    deals = [[group_of_rank(node_groups, local, seed=4, epoch=epoch) for local in range(4)] for epoch in range(20)]
    assert all(sorted(deal) == node_groups for deal in deals)  # each epoch, each group read by one rank
    assert len({tuple(deal) for deal in deals}) > 5  # reshuffled across epochs
    assert deals[7] == [group_of_rank(node_groups, local, seed=4, epoch=7) for local in range(4)]
    assert Counter(deal[0] for deal in deals).keys() == set(node_groups)


class Gather:
    """torch.distributed.all_gather_object for ranks that are threads of this test."""

    def __init__(self, world_size: int) -> None:
        self.values: list = [None] * world_size
        self.barrier = threading.Barrier(world_size)

    def for_rank(self, rank: int):
        def gather(value):
            self.values[rank] = value
            self.barrier.wait()
            return list(self.values)

        return gather


def run_ranks(remote: Path, node_dirs: list[Path], nodes: list[str], seed: int = 3) -> list:
    """One thread per rank; rank r runs on node nodes[r] staging into node_dirs[r]."""
    gather, plans, errors = Gather(len(nodes)), [None] * len(nodes), []

    def rank(r: int) -> None:
        try:
            plans[r] = plan_and_stage(str(remote), node_dirs[r], world_size=len(nodes), node=nodes[r],
                                      rank=r, seed=seed, gather=gather.for_rank(r))  # fmt: skip
        except Exception as err:  # surfaced below: a thread's exception would vanish
            errors.append(err)
            gather.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(nodes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return plans


def test_each_node_stages_only_its_ranks_shards_and_a_new_placement_downloads_nothing(published, tmp_path) -> None:
    _, remote = published
    a, b = tmp_path / "node-a", tmp_path / "node-b"
    plans = run_ranks(remote, [a, b, b], ["A", "B", "B"])  # one rank on A, two on B
    train_files = {train_shard_file(shard) for shard in SAMPLES}
    staged = {
        node: {p.name for p in plan.directory.iterdir()} & train_files for node, plan in zip("ABB", plans, strict=True)
    }
    groups = plans[0].groups
    assert plans[1].groups == plans[2].groups == groups and len(groups) == 3
    assert staged["A"] == {train_shard_file(s) for g in plans[0].node_groups for s in groups[g]}
    assert staged["B"] == {train_shard_file(s) for g in plans[1].node_groups for s in groups[g]}
    assert staged["A"].isdisjoint(staged["B"]) and staged["A"] | staged["B"] == train_files
    for plan in plans:  # the index and the validation shard are on every node
        assert {"index.parquet", "validation-00000.beton"} <= {p.name for p in plan.directory.iterdir()}
    for epoch in range(3):  # every epoch, the ranks read disjoint shards covering the set
        read = [plan.shards(epoch) for plan in plans]
        assert sorted(shard for shards in read for shard in shards) == sorted(SAMPLES)
    downloads = sum(len(plan.report.downloaded) for plan in plans)
    assert downloads == len(SAMPLES) + 2 * 2  # each train shard once, index + validation once per node

    # Restarted with the ranks placed the other way round (B's ranks first, A's last): nothing to fetch.
    again = run_ranks(remote, [b, b, a], ["B", "B", "A"])
    assert all(plan.report.downloaded == [] for plan in again)
    assert [plan.groups for plan in again] == [groups] * 3


@pytest.mark.integration
def test_publish_and_stage_through_s3(tmp_path) -> None:
    shards = fake_shard_set(tmp_path / "shards")
    with moto_server(tmp_path, buckets=("lic-shards",)) as s3:
        uri = s3.storage_path("lic-shards/sets/sample")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in s3.env().items():
                patch.setenv(name, value)
            publish(shards, uri)
            keys = s3.keys("lic-shards", "sets/sample/")
            assert sorted(key.rsplit("/", 1)[1] for key in keys) == sorted(p.name for p in shards.iterdir())
            report = Stager(uri, tmp_path / "node").stage([train_shard_file(0), "index.parquet"])
        assert report.bytes_downloaded == 40_000 + (shards / "index.parquet").stat().st_size
        assert (report.directory / train_shard_file(0)).read_bytes() == (shards / train_shard_file(0)).read_bytes()


def test_lic_publish_shards_uploads_shards_dir_where_it_is_told(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from lic.cli import app

    shards = fake_shard_set(tmp_path / "project" / "data" / "shards")
    params = tmp_path / "project" / "params.yaml"
    project = project_params()
    project["shards"].update(dir=str(shards), remote=None)
    params.write_text(yaml.safe_dump(project))
    monkeypatch.delenv("LIC_SHARDS_REMOTE", raising=False)
    refused = CliRunner().invoke(app, ["publish-shards", "--params", str(params)])
    assert refused.exit_code != 0 and "nowhere to publish" in str(refused.exception)
    monkeypatch.setenv("LIC_SHARDS_REMOTE", str(tmp_path / "bucket"))
    result = CliRunner().invoke(app, ["publish-shards", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "published 8 files" in result.output
    assert (
        Stager(str(tmp_path / "bucket"), tmp_path / "node").checksums.keys()
        == json.loads((shards / "checksums.json").read_text()).keys()
    )
