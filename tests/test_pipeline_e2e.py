"""Acceptance of issue 9: `make pipeline` on a fresh clone, offline, and against the local stack (`make stack-up`).

Each test copies the working tree as a fresh clone has it (what git tracks or would track) into a new git
repository and runs the real make targets there with this environment: `VENV=` points make at it and `-o` marks
its install stamp done, so nothing is installed. The clone's params.yaml only cuts the training steps; the sample
profile's two lambdas, 256 and 512 crops and two Ray workers run as in a user's `make pipeline`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from lic.checkpoint import load_checkpoint
from lic.io.checksums import file_digest
from lic.registry.naming import registered_name
from lic.registry.promotion import CANDIDATE
from lic.stack.local import CHECKPOINTS, Stack
from lic.stack.processes import Process, free_port
from tests.data_support import ROOT, tool_env
from tests.servers import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.pipeline, pytest.mark.timeout(2400)]

VENV = Path(sys.prefix)
MAKE = ["make", "-o", str(VENV / ".installed"), f"VENV={VENV}"]
STEPS = 2
# What points the pipeline at shared infrastructure: a fresh clone's first `make pipeline` has none of it.
INFRA_PREFIXES = ("RAY_ADDRESS", "RAY_AUTH_", "MLFLOW_TRACKING_", "MLFLOW_S3_", "LIC_", "AWS_", "MAKE", "MFLAGS")


def fresh_clone(directory: Path) -> Path:
    """The working tree as a fresh clone of it has it, committed in a new repository; training cut to STEPS."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in sorted(set(listed.split("\0")) - {""}):
        if (ROOT / name).is_file():  # a tracked file deleted from the working tree is not part of it
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes((ROOT / name).read_bytes())
    params = yaml.safe_load((directory / "params.yaml").read_text())
    train = params["train"]
    train.update(steps={**train["steps"], "sample": STEPS}, log_every=1, val_every=STEPS, checkpoint_every=STEPS)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        identity = ["-c", "user.name=lic tests", "-c", "user.email=tests@lic.invalid"]
        subprocess.run(["git", *identity, *command], cwd=directory, capture_output=True, check=True)
    return directory


def clean_env() -> dict[str, str]:
    """This shell's environment without any pointer to shared infrastructure (and without an outer make's)."""
    env = {key: value for key, value in tool_env().items() if not key.startswith(INFRA_PREFIXES)}
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "600"  # 60 s by default; a busy 2-core CI machine needs more
    return env


def shell(clone: Path, command: list[str], source: Path | None = None) -> str:
    """`command` in the clone, in a bash that sourced `source` first if given; returns stdout and stderr together.
    A failure shows the end of that output."""
    if source:
        command = ["bash", "-c", f'source {shlex.quote(str(source))} && exec "$@"', "bash", *command]
    done = subprocess.run(
        command, cwd=clone, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert done.returncode == 0, (
        f"{shlex.join(command)} failed ({done.returncode}); its output ends:\n{done.stdout[-8000:]}"
    )
    return done.stdout


def make(clone: Path, *args: str, source: Path | None = None) -> str:
    return shell(clone, [*MAKE, *args], source)


def check_outputs(clone: Path) -> dict[str, dict]:
    """Shards, each lambda's checkpoint and evaluation, the report's figures; returns each lambda's checkpoint
    metadata."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for name in ("train-00000.beton", "train-00001.beton", "validation-00000.beton", "index.parquet", "checksums.json"):
        assert (clone / params["shards"]["dir"] / name).stat().st_size > 0, name
    trained = {}
    for key, entry in params["lambdas"].items():
        checkpoint = clone / params["train"]["outputs"] / key / "model.pt"
        model, trained[key] = load_checkpoint(checkpoint)  # torch.load(weights_only=True), then the weights
        assert (trained[key]["step"], trained[key]["lmbda"]) == (STEPS, entry["lmbda"])
        assert model.spec.config == params["train"]["model"]["config"]
        results = json.loads((clone / params["evaluate"]["out_dir"] / key / "results.json").read_text())
        assert results["checkpoint_sha256"] == file_digest(checkpoint, "sha256")
        assert results["datasets"] and all(m["bpp"] > 0 and m["psnr"] > 0 for m in results["datasets"].values())
    figures = sorted((clone / params["report"]["out_dir"] / "figures").glob("*.png"))
    assert figures and all(figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for figure in figures)
    return trained


def check_registered(client: MlflowClient, clone: Path, output: str) -> None:
    """Every lambda is a registered model, named by lic.registry, whose first version is candidate and holds that
    lambda's checkpoint, but not champion: the 16-step sample models are worse than JPEG, so the quality floor
    refuses them (before the floor, a fresh store made them champion); the summary lists them and says so."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert "Rate-distortion results (real bitstreams):" in output
    for key, entry in params["lambdas"].items():
        name = registered_name(params["train"]["model"]["name"], entry["metric"], entry["lmbda"])
        candidate = client.get_model_version_by_alias(name, CANDIDATE)
        assert (str(candidate.version), candidate.aliases) == ("1", [CANDIDATE])
        assert candidate.tags["checkpoint_sha256"] == file_digest(
            clone / params["train"]["outputs"] / key / "model.pt", "sha256"
        )
        assert candidate.tags["floor"] == "failed" and candidate.run_id == candidate.tags["training.mlflow_run_id"]
        assert f"{key}: models:/{name}/1  (candidate, not promoted: not better than jpeg" in output
    assert "No champion" in output and "@champion" not in output


def test_make_pipeline_on_a_fresh_clone_runs_offline_and_a_second_run_does_nothing(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    first = make(clone, "pipeline")
    trained = check_outputs(clone)
    check_registered(MlflowClient(f"sqlite:///{clone / 'mlflow.db'}"), clone, first)
    assert all((clone / "outputs/train/runs" / meta["run_name"]).is_dir() for meta in trained.values())

    second = make(clone, "pipeline")
    assert "Running stage" not in second and "Data and pipelines are up to date." in second, second[-3000:]
    assert "Rate-distortion results (real bitstreams):" in second


@contextmanager
def stopped_at_exit(stack: Stack) -> Iterator[None]:
    """Stop the stack whatever happens in the test (a no-op once `make stack-down` ran)."""
    try:
        yield
    finally:
        stack.down()


@pytest.mark.integration
def test_make_pipeline_against_the_local_stack_keeps_everything_there(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    stack = Stack(tmp_path / "stack")
    ports = f"--s3-port {free_port()} --mlflow-port {free_port()} --ray-port {free_port()}"
    knobs = [f"STACK_DIR={stack.directory}", f"STACK_ARGS={ports}"]
    with stopped_at_exit(stack):
        make(clone, "stack-up", *knobs)
        output = make(clone, "pipeline", source=stack.env_file)
        env = stack.environment()
        trained = check_outputs(clone)

        # Checkpoints: Ray Train's run folders in the checkpoints bucket, none on local disk.
        s3 = S3Server(env["AWS_ENDPOINT_URL"])
        bucket, prefix = CHECKPOINTS.split("/", 1)
        keys = set(s3.keys(bucket, prefix))
        for meta in trained.values():
            run = f"{prefix}/{meta['run_name']}"
            assert {f"{run}/checkpoint_manager_snapshot.json", f"{run}/step-{STEPS:08d}/model.pt"} <= keys, keys
        assert not (clone / "outputs/train/runs").exists()

        # MLflow: training runs and registered models on the server, no local store.
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(
            yaml.safe_load((clone / "params.yaml").read_text())["train"]["experiment"]
        )
        for meta in trained.values():
            run = client.get_run(meta["mlflow_run_id"])
            assert (run.info.experiment_id, run.info.status) == (experiment.experiment_id, "FINISHED")
        check_registered(client, clone, output)
        assert not (clone / "mlflow.db").exists()

        # DVC: `make pipeline` made LIC_DVC_REMOTE the clone's default remote and pushed every cached output.
        assert "Cache and remote 'team' are in sync." in shell(clone, ["dvc", "status", "--cloud"], stack.env_file)
        lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
        bucket, prefix = env["LIC_DVC_REMOTE"].removeprefix("s3://").split("/", 1)
        pushed = set(s3.keys(bucket, prefix))
        for key in trained:
            md5 = next(out["md5"] for out in lock[f"train@{key}"]["outs"] if out["path"].endswith("model.pt"))
            assert f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}" in pushed, sorted(pushed)

        state = json.loads(stack.state_file.read_text())
        members = [m for s in state["services"] for m in Process(s["pid"], s["create_time"]).members()]
        assert len(state["services"]) == 4 and len(members) > 4  # the servers and what they forked
        make(clone, "stack-down", *knobs)
        assert [m.pid for m in members if m.is_running() and m.status() != psutil.STATUS_ZOMBIE] == []
        assert not stack.env_file.exists()
