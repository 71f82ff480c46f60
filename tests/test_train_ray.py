"""Training with Ray Train on a real two-node Ray cluster (head + worker node on 127.0.0.1, one CPU each).

One module-wide set of servers (moto S3, `mlflow server`, the cluster) and one DVC project holding this pipeline
and the sample shards. Every run has two DDP workers, which the cluster can only place one per node. Ray runs
are the expensive part on two cores, so there are five, each asserting as much as it shows:

- `dvc repro train`: both lambdas, checkpoints in a local folder, MLflow on the server; then one lambda changed,
  and only its stage retrains;
- `lic train` with S3 checkpoints: a worker kills itself mid-run and the run resumes from the latest checkpoint;
  the driver is interrupted later, and running it again continues from the latest checkpoint.
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

import psutil
import pytest
import torch
import yaml
from mlflow import MlflowClient

from lic.checkpoint import load_checkpoint, read_checkpoint
from tests.data_support import ROOT, dvc_project, project_params, run, tool_env, write_params
from tests.servers import mlflow_server, moto_server, ray_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = "test-train"
BUCKET = "checkpoints"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC repository with the whole pipeline, tiny training settings and the sample shards."""
    directory = dvc_project(tmp_path_factory.mktemp("train") / "project")
    shutil.copytree(ROOT / "lic", directory / "lic", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    params = project_params()
    params["train"]["model"]["config"] = {"N": [8, 8, 16], "M": 40, "slices": 2}
    params["train"].update(steps={"sample": 2}, log_every=1, val_every=2, checkpoint_every=2, experiment=EXPERIMENT)
    params["train"]["ray"].update(num_workers=2, cpus_per_worker=1, max_failures=1, keep_best=1)
    params["loader"].update(crop_mix={256: 1.0}, batch_size={256: 2, 512: 1}, validation_crop=256)
    write_params(directory, params)
    run([sys.executable, "-m", "dvc", "repro", "shard"], directory)
    return directory


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """moto S3, an MLflow server and a two-node Ray cluster, and the environment a driver needs for them."""
    workdir = tmp_path_factory.mktemp("servers")
    with ExitStack() as servers:
        s3 = servers.enter_context(moto_server(workdir, buckets=(BUCKET,)))
        mlflow = servers.enter_context(mlflow_server(workdir / "mlflow"))
        cluster = servers.enter_context(ray_cluster(workdir, worker_nodes=1, cpus_per_node=1, node_env=s3.env()))
        env = {**tool_env(), **s3.env(), **mlflow.env(), **cluster.env, "RAY_USAGE_STATS_ENABLED": "0"}
        env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "600"  # 60 s by default; a busy 2-core CI machine needs more
        yield s3, MlflowClient(mlflow.uri), env


def dvc_lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def git_head(project: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()


def shards_version(project: Path) -> str:
    return next(out["md5"] for out in dvc_lock(project)["shard"]["outs"] if out["path"] == "data/shards")


def final_metrics(project: Path, key: str) -> dict:
    return json.loads((project / "outputs/train" / key / "metrics.json").read_text())


def mlflow_run(client: MlflowClient, run_id: str):
    run = client.get_run(run_id)
    assert run.info.experiment_id == client.get_experiment_by_name(EXPERIMENT).experiment_id
    return run


def test_dvc_trains_every_lambda_on_two_nodes_and_retrains_only_a_changed_one(project, stack) -> None:
    _, client, env = stack
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "code"], cwd=project, check=True)  # a commit to record
    first = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:]
    runs = {}
    for key in ("l0018", "l0130"):
        model, metadata = load_checkpoint(project / "outputs/train" / key / "model.pt")
        assert model.spec.config == {"N": [8, 8, 16], "M": 40, "slices": 2}
        assert metadata["lmbda"] == project_params()["lambdas"][key]["lmbda"] and metadata["step"] == 2
        assert metadata["data_version"] == shards_version(project)
        assert final_metrics(project, key)["nodes"] == 2  # two workers, one per node
        run_dir = project / "outputs/train/runs" / metadata["run_name"]
        assert (run_dir / "checkpoint_manager_snapshot.json").is_file()
        read_checkpoint(run_dir / "step-00000002" / "model.pt")
        runs[key] = mlflow_run(client, metadata["mlflow_run_id"])
        assert runs[key].info.status == "FINISHED"
        assert runs[key].data.params["lmbda"] == str(metadata["lmbda"])
        assert runs[key].data.params["world_size"] == "2"
        assert runs[key].data.params["data_version"] == shards_version(project)
        assert len(set(runs[key].data.tags["sys.nodes"].split(","))) == 2
        assert [m.step for m in client.get_metric_history(runs[key].info.run_id, "loss")] == [1, 2]
        assert [m.step for m in client.get_metric_history(runs[key].info.run_id, "val_psnr")] == [2]
        assert "samples_per_s" in runs[key].data.metrics and "aux_loss" in runs[key].data.metrics
        artifacts = [a.path for a in client.list_artifacts(runs[key].info.run_id, "checkpoint")]
        assert artifacts == ["checkpoint/model.pt"]
        # Lineage (issue 18.3): the shard set as a dataset whose digest is its DVC hash, the git commit, the source.
        (dataset,) = runs[key].inputs.dataset_inputs
        assert (dataset.dataset.name, dataset.dataset.digest) == ("shards", shards_version(project))
        assert runs[key].data.tags["lic.data_version"] == shards_version(project)
        assert runs[key].data.tags["mlflow.source.git.commit"] == git_head(project)
        assert runs[key].data.tags["mlflow.source.name"] == "pipelines/train.py"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    before = dvc_lock(project)["train@l0130"]

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["lambdas"]["l0018"]["lmbda"] = 0.0035
    write_params(project, params)
    second = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    assert "Running stage 'train@l0018'" in second.stdout and "Running stage 'train@l0130'" not in second.stdout
    assert dvc_lock(project)["train@l0130"] == before
    _, metadata = load_checkpoint(project / "outputs/train/l0018/model.pt")
    assert metadata["lmbda"] == 0.0035 and metadata["mlflow_run_id"] != runs["l0018"].info.run_id
    assert final_metrics(project, "l0018")["start_step"] == 0  # a new lambda is a new run, trained from scratch


def test_a_killed_worker_and_an_interrupted_driver_both_resume_from_the_latest_s3_checkpoint(project, stack) -> None:
    s3, client, env = stack
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(steps={"sample": 8}, storage_path=s3.storage_path(f"{BUCKET}/runs"))
    config = project / "s3.yaml"
    config.write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "lic.cli", "train", "--key", "l0130", "--config", str(config)]

    # First driver: once checkpoint 2 is recorded, the test kills a training worker (SIGKILL, as a lost node would
    # be); the restarted group goes on from the latest checkpoint (2, or a later one a fast machine recorded
    # before the kill landed). The test interrupts the driver once checkpoint 4 is recorded.
    log = project / "first-driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            run_prefix = wait_for_checkpoint(s3, driver, log, step=2, timeout_s=900)
            recorded_at_kill = latest_checkpoint_step(s3, run_prefix)
            kill_one_training_worker()
            wait_for_checkpoint(s3, driver, log, step=4, timeout_s=900)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the driver stops, Ray ends the run's workers
            driver.wait(timeout=120)
    text = log.read_text()
    group_starts = sorted({int(start) for start in re.findall(r"steps (\d+) -> 8 on", text)})  # Ray echoes each twice
    assert len(group_starts) == 2 and group_starts[0] == 0, text[-8000:]
    assert 2 <= recorded_at_kill <= group_starts[1] < 8  # the restarted group began at a checkpoint, not at 0
    assert not (project / "outputs/train/l0130/metrics.json").exists() or final_metrics(project, "l0130")["step"] < 8

    latest = latest_checkpoint_step(s3, run_prefix)
    second = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    metrics = final_metrics(project, "l0130")
    assert metrics["step"] == 8 and metrics["start_step"] == latest and 4 <= latest < 8
    assert metrics["nodes"] == 2

    keys = s3.keys(BUCKET, run_prefix)
    kept = sorted({key.split("/")[2] for key in keys if key.split("/")[2].startswith("step-")})
    assert "step-00000008" in kept and len(kept) <= 2  # the best (by validation loss) and the latest
    for name in kept:
        for part in ("model.pt", "state.pt"):
            local = project / "downloaded" / name / part
            local.parent.mkdir(parents=True, exist_ok=True)
            s3.client().download_file(BUCKET, f"{run_prefix}/{name}/{part}", str(local))
        assert read_checkpoint(local.parent / "model.pt")["metadata"]["step"] == int(name.split("-")[1])
        assert torch.load(local.parent / "state.pt", weights_only=True)["step"] == int(name.split("-")[1])

    _, metadata = load_checkpoint(project / "outputs/train/l0130/model.pt")
    assert metadata["step"] == 8 and metadata["run_name"] == run_prefix.split("/")[1]
    history = client.get_metric_history(metadata["mlflow_run_id"], "loss")
    assert {m.step for m in history} == set(range(1, 9))  # one MLflow run across the restart and the re-run
    assert mlflow_run(client, metadata["mlflow_run_id"]).info.status == "FINISHED"


def kill_one_training_worker() -> None:
    """SIGKILL the newest Ray Train worker process of this machine (Ray names them `ray::RayTrainWorker...`)."""
    workers = [p for p in psutil.process_iter(["name", "cmdline", "create_time"]) if _is_train_worker(p)]
    assert workers, "no Ray Train worker process found"
    max(workers, key=lambda p: p.info["create_time"]).kill()


def _is_train_worker(process: psutil.Process) -> bool:
    title = " ".join(process.info["cmdline"] or []) or process.info["name"] or ""
    return "RayTrainWorker" in title


def wait_for_checkpoint(s3, driver: subprocess.Popen, log: Path, step: int, timeout_s: float) -> str:
    """Poll the run's snapshot in S3 until Ray records checkpoint `step` as the latest; returns `runs/<name>`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver ended before checkpoint {step}:\n{log.read_text()[-8000:]}"
        for key in s3.keys(BUCKET, "runs/"):
            if key.endswith("/checkpoint_manager_snapshot.json"):
                prefix = key.rsplit("/", 1)[0]
                if latest_checkpoint_step(s3, prefix) >= step:
                    return prefix
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint {step} after {timeout_s} s")


def latest_checkpoint_step(s3, prefix: str) -> int:
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/checkpoint_manager_snapshot.json")["Body"].read()
    latest = json.loads(body)["latest_checkpoint_result"]
    return latest["metrics"]["step"] if latest else 0
