"""The data stages under real DVC: the sample profile offline in a temporary git repo, and the raw snapshot
round-tripping through an S3 remote served by moto on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.data_support import ROOT, dvc_project, run
from tests.servers import S3Server, moto_server

DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pipeline whose sample profile has run up to dedupe (once for the module)."""
    root = dvc_project(tmp_path_factory.mktemp("project") / "repo")
    first = run([*DVC, "repro", "dedupe"], root)
    assert "Running stage 'dedupe'" in first.stdout
    return root


def test_sample_profile_runs_offline_and_produces_manifests_and_report(project: Path) -> None:
    for name in ("sources/sample.parquet", "sources/coco.parquet", "merged.parquet", "train.parquet", "eval.parquet"):
        assert (project / "data/manifests" / name).is_file(), name
    metrics = json.loads((project / "data/reports/dedup.json").read_text())
    assert list(metrics["sources"]) == ["sample"]
    assert metrics["total"] == {
        "files": 18, "ok": 17, "converted": 7, "skipped": 1, "train": 14, "eval": 3, "kept": 14,
        "exact_duplicates": 0, "near_duplicates": 0, "leakage": 0,
    }  # fmt: skip
    report = (project / "data/reports/dedup.md").read_text()
    # the stereo pair's two views: 4 bits apart on the 64-bit hashes, 76 on the 256-bit ones, so both are kept
    assert "## Duplicates removed from training (0)" in report
    shard = "data/raw/sample/train-00000.tar"  # training images are members of the source's tar shards
    assert f"| {shard}/skimage/text.png | too small (448x172, short side < 256) |" in report
    shown = json.loads(run([*DVC, "metrics", "show", "--json"], project).stdout)
    assert shown[""]["data"]["data/reports/dedup.json"]["data"]["total"]["kept"] == 14
    inactive = json.loads((project / "data/raw/coco/source.json").read_text())
    assert inactive["active"] is False


def test_a_second_repro_does_nothing(project: Path) -> None:
    second = run([*DVC, "repro", "dedupe"], project)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert "Data and pipelines are up to date" in run([*DVC, "status", "dedupe"], project).stdout


@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with the team's bucket."""
    with moto_server(tmp_path, buckets=("lic-data",)) as server:
        yield server


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_fresh_clone_gets_the_empty_datasets_folder_that_datasets_dvc_records(tmp_path: Path) -> None:
    clone = dvc_project(tmp_path / "clone")
    shutil.copy2(ROOT / "datasets.dvc", clone / "datasets.dvc")
    assert "not in cache" in run([*DVC, "status", "datasets.dvc"], clone).stdout
    assert "created" in run([sys.executable, "-m", "lic.cli", "data", "ensure-datasets"], clone).stdout
    assert (clone / "datasets").is_dir()
    assert "Data and pipelines are up to date" in run([*DVC, "status", "datasets.dvc"], clone).stdout
    assert (clone / "datasets.dvc").read_text() == (ROOT / "datasets.dvc").read_text()


@pytest.mark.integration
def test_raw_snapshot_round_trips_through_an_s3_remote(project: Path, moto_s3: S3Server) -> None:
    """Push everything, lose cache and workspace, pull: the same bytes return and nothing needs re-running.
    (Last in the module: it adds datasets/ and a remote to the shared project.)"""
    s3 = moto_s3.client()
    team = project / "datasets" / "imagenet" / "train" / "n01"
    team.mkdir(parents=True)
    with tarfile.open(project / "data/raw/sample/train-00000.tar") as shard:
        (team / "n01_1.JPEG").write_bytes(shard.extractfile("skimage/rocket.jpg").read())
    run([*DVC, "add", "-q", "datasets"], project)
    for command in (
        ["remote", "add", "-d", "team", "s3://lic-data/dvc"],
        ["remote", "modify", "team", "endpointurl", moto_s3.endpoint],
        ["remote", "modify", "--local", "team", "access_key_id", "testing"],
        ["remote", "modify", "--local", "team", "secret_access_key", "testing"],
    ):
        run([*DVC, *command], project)
    assert "testing" not in (project / ".dvc/config").read_text()  # credentials stay in git-ignored config.local

    raw, team_data = _digests(project / "data/raw"), _digests(project / "datasets")
    run([*DVC, "push"], project)
    assert s3.list_objects_v2(Bucket="lic-data", Prefix="dvc/")["KeyCount"] > len(raw)

    for gone in (".dvc/cache", "data/raw", "datasets"):
        shutil.rmtree(project / gone)
    # only what ran here: the raw snapshot and the data stages (later stages have no outputs in this project)
    run([*DVC, "pull", "--with-deps", "dedupe", "datasets.dvc"], project)
    assert _digests(project / "data/raw") == raw
    assert _digests(project / "datasets") == team_data
    assert "Data and pipelines are up to date" in run([*DVC, "status", "dedupe", "datasets.dvc"], project).stdout
    assert "Running stage" not in run([*DVC, "repro", "dedupe"], project).stdout
    assert "in sync" in run([*DVC, "status", "--cloud"], project).stdout
