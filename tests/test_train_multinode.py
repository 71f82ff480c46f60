"""Training on nodes that share no data: the shard set exists only in a moto S3 bucket, and a Ray head and a
worker node (127.0.0.1, one CPU each, each with its own staging folder) run a two-rank DDP run, one rank per node.

The project's own data/ is deleted after publishing, so a rank that opened anything under it would fail. The test
kills the worker node's rank after the first checkpoint (from outside, as a lost process would be); Ray restarts
the worker group from that checkpoint and the nodes find their shards already staged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lic.train.staging import publish, train_shard_file
from tests.data_support import ROOT, dvc_project, project_params, run, tool_env, write_params
from tests.servers import mlflow_server, moto_server, ray_cluster

pytestmark = [pytest.mark.multinode, pytest.mark.integration, pytest.mark.slow]

BUCKET = "lic"


def staged_train_files(stage_root: Path) -> dict[str, tuple[int, int]]:
    """Train shard files staged under a node's folder: name -> (inode, mtime): a re-download changes both."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in stage_root.glob("*/train-*.beton")}


def rank_pids_on(stage_root: Path) -> list[int]:
    """The Ray Train worker processes of the node whose staging folder is `stage_root` (its environment says)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in command and f"LIC_STAGE_DIR={stage_root}".encode() in environ.split(b"\0"):
            pids.append(int(proc.name))
    return pids


def test_two_nodes_stage_only_their_shards_from_s3_and_a_killed_rank_resumes_with_them(tmp_path, monkeypatch) -> None:
    project = dvc_project(tmp_path / "project")
    shutil.copytree(ROOT / "lic", project / "lic", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    params = project_params()
    params["train"]["model"]["config"] = {"N": [8, 8, 16], "M": 40, "slices": 2}
    params["train"].update(steps={"sample": 6}, log_every=1, val_every=2, checkpoint_every=2, experiment="multinode")
    params["train"]["ray"].update(num_workers=2, cpus_per_worker=1, max_failures=1, keep_best=1)
    params["loader"].update(crop_mix={256: 1.0}, batch_size={256: 1, 512: 1}, validation_crop=256)
    write_params(project, params)
    run([sys.executable, "-m", "dvc", "repro", "shard"], project)
    shards = project / "data" / "shards"
    index = pq.read_table(shards / "index.parquet").to_pydict()
    splits = zip(index["split"], index["shard"], strict=True)
    train_shards = sorted({shard for split, shard in splits if split == "train"})
    assert len(train_shards) >= 2

    stage = {"head": tmp_path / "head-disk", "worker": tmp_path / "worker-disk"}
    with ExitStack() as servers:
        s3 = servers.enter_context(moto_server(tmp_path, buckets=(BUCKET,)))
        remote = s3.storage_path(f"{BUCKET}/shards/sample")
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        publish(shards, remote)
        shutil.rmtree(project / "data")  # the head's local copy: nothing under data/ is left to open
        mlflow = servers.enter_context(mlflow_server(tmp_path / "mlflow"))
        own = [{"LIC_STAGE_DIR": str(stage["head"])}, {"LIC_STAGE_DIR": str(stage["worker"])}]
        cluster = servers.enter_context(ray_cluster(tmp_path, worker_nodes=1, node_env=s3.env(), own_env=own))
        env = {**tool_env(), **s3.env(), **mlflow.env(), **cluster.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}
        params["train"]["storage_path"] = s3.storage_path(f"{BUCKET}/runs")
        params["shards"]["remote"] = remote
        config = project / "multinode.yaml"
        config.write_text(yaml.safe_dump(params, sort_keys=False))
        log = tmp_path / "driver.log"
        command = [sys.executable, "-m", "lic.cli", "train", "--key", "l0130", "--config", str(config)]
        with log.open("w") as out:
            driver = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
            try:
                before = wait_for_checkpoint_and_kill(s3, driver, log, stage["worker"], timeout_s=1500)
                assert driver.wait(timeout=1500) == 0, log.read_text()[-6000:]
            finally:
                if driver.poll() is None:
                    os.killpg(driver.pid, signal.SIGKILL)

    text = log.read_text()
    head, worker = staged_train_files(stage["head"]), staged_train_files(stage["worker"])
    assert head and worker and head.keys().isdisjoint(worker.keys())  # each node: only its rank's shards
    assert head.keys() | worker.keys() == {train_shard_file(shard) for shard in train_shards}
    assert worker == before  # after the restart: the same files, not downloaded again
    assert re.search(r"steps [24] -> 6", text), text[-6000:]  # the restarted group resumed from a checkpoint
    metrics = json.loads((project / "outputs/train/l0130/metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["nodes"] == 2 and "val_loss" in metrics
    assert not (project / "data").exists()


def wait_for_checkpoint_and_kill(s3, driver, log: Path, worker_stage: Path, timeout_s: float) -> dict:
    """Once checkpoint 2 is in S3, SIGKILL the worker node's rank; returns that node's staged files then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver ended before checkpoint 2:\n{log.read_text()[-6000:]}"
        if any(key.endswith("step-00000002/model.pt") for key in s3.keys(BUCKET, "runs/")):
            staged = staged_train_files(worker_stage)
            pids = rank_pids_on(worker_stage)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            return staged
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint 2 after {timeout_s} s:\n{log.read_text()[-6000:]}")
