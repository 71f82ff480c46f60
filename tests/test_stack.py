"""The local stack, `lic stack up|down|status`: moto S3, an mlflow server and a two-node Ray cluster on this machine.

The stack runs once per module on free ports (starting it costs 20-60 s on 2 cores). Every check goes through the
generated env.sh in a fresh shell, as a user's would; the process checks at the end prove `down` leaves nothing.
The first tests need no servers: they pin how processes are stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lic.errors import LicError
from lic.stack.local import BUCKETS
from lic.stack.processes import Launch, Process, free_port, log_says, start, stop, wait_ready

BIN = Path(sys.executable).parent


def _sleeper(tmp_path: Path, script: str = "sleep 300 & echo started; wait") -> Launch:
    log = tmp_path / "sleeper.log"
    return Launch("sleeper", ["bash", "-c", script], dict(os.environ), log, log_says(log, "started"), timeout_s=20)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    launch = _sleeper(tmp_path, "sleep 300 & sleep 300 & echo started; wait")
    process = start(launch)
    wait_ready(launch, process)
    members = process.members()
    assert len(members) == 3  # bash and its two children
    stop([process])
    assert not any(member.is_running() and member.status() != psutil.STATUS_ZOMBIE for member in members)


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """A recorded PID whose process has another start time belongs to somebody else now."""
    process = start(_sleeper(tmp_path))
    impostor = Process(process.pid, process.create_time - 100)
    try:
        assert impostor.members() == [] and impostor.leader() is None
        stop([impostor])
        assert process.leader() is not None
    finally:
        stop([process])


def test_a_server_that_exits_early_is_an_error_naming_its_log(tmp_path: Path) -> None:
    launch = _sleeper(tmp_path, "echo 'port 9000 is taken'; exit 3")
    with pytest.raises(LicError, match=r"sleeper exited before it was ready; see .*sleeper\.log:\nport 9000 is taken"):
        wait_ready(launch, start(launch))


def test_the_ray_token_is_private_from_the_moment_it_exists(tmp_path: Path, monkeypatch) -> None:
    """The token must never be readable by others, not even between its write and a chmod: the temporary file
    renamed into place must already be 0600."""
    from lic.stack import services

    modes_at_rename = []
    real_replace = os.replace

    def replace(source, target):
        modes_at_rename.append(os.stat(source).st_mode & 0o777)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    old_umask = os.umask(0o022)
    try:
        token = services.write_ray_token(tmp_path / "ray_auth_token")
    finally:
        os.umask(old_umask)
    assert modes_at_rename == [0o600]
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64


def needs_stack(test):
    """Integration and slow: the module's stack starts real servers (20-60 s on 2 cores, more under load)."""
    return pytest.mark.integration(pytest.mark.slow(test))


def _lic(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lic"), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """A running stack: its directory and the port options it was started with."""
    directory = tmp_path_factory.mktemp("stack")
    ports = ["--s3-port", free_port(), "--mlflow-port", free_port(), "--ray-port", free_port()]
    up = _lic("stack", "up", "--dir", directory, *ports)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield directory, [str(port) for port in ports]
    finally:
        _lic("stack", "down", "--dir", directory)  # a no-op when the last test already stopped it


def _in_stack_shell(directory: Path, command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`command` in a bash that sourced env.sh and nothing else of the stack."""
    script = f'set -e; source "{directory / "env.sh"}"; export PATH="{BIN}:$PATH"; {command}'
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)


# One driver for Ray, MLflow, DVC and S3: importing them costs seconds, so it runs once.
DRIVER = textwrap.dedent(
    """
    import json, os, boto3, mlflow, pyarrow.fs, ray, requests
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    s3 = boto3.client("s3")
    found = {"versioning": {}, "health": requests.get(os.environ["MLFLOW_TRACKING_URI"] + "/health").text}
    for bucket in BUCKETS:
        found["versioning"][bucket] = s3.get_bucket_versioning(Bucket=bucket).get("Status")

    ray.init()  # RAY_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH come from env.sh
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]

    @ray.remote(num_cpus=1)
    def write_checkpoint(storage_path):
        # What a Ray Train worker does with LIC_STORAGE_PATH: its node has the S3 credentials, not the driver.
        fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
        node = ray.get_runtime_context().get_node_id()
        with fs.open_output_stream(f"{path}/probe/{node}") as out:
            out.write(b"checkpoint")
        return node

    pinned = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes]
    storage = os.environ["LIC_STORAGE_PATH"]
    found["written_by"] = ray.get([write_checkpoint.options(scheduling_strategy=s).remote(storage) for s in pinned])
    found["nodes"] = nodes

    mlflow.set_experiment("stack-test")
    with mlflow.start_run() as run:
        mlflow.log_metric("bpp", 0.5)
        mlflow.log_text("rd", "eval/probe.txt")
    found["run_id"] = run.info.run_id

    # DVC: LIC_DVC_REMOTE as its remote and AWS_ENDPOINT_URL from the environment, no endpointurl of its own.
    from dvc.repo import Repo

    with open("weights.bin", "wb") as out:
        out.write(bytes(2000))
    repo = Repo.init(".", no_scm=True)
    with repo.config.edit("local") as config:
        config["remote"]["stack"] = {"url": os.environ["LIC_DVC_REMOTE"]}
        config["core"]["remote"] = "stack"
    repo.add("weights.bin")
    found["dvc_pushed"] = repo.push()

    found["objects"] = {
        bucket: [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] for bucket in BUCKETS
    }
    print(json.dumps(found))
    """
)


@needs_stack
def test_env_sh_reaches_s3_mlflow_dvc_and_a_two_node_ray_cluster(stack, tmp_path: Path) -> None:
    directory, _ = stack
    driver = tmp_path / "driver.py"
    driver.write_text(f"BUCKETS = {BUCKETS!r}\n{DRIVER}")
    done = _in_stack_shell(directory, f"python {driver}", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])

    assert found["versioning"] == dict.fromkeys(BUCKETS, "Enabled")  # made by infra/s3/create_buckets.py
    assert found["health"] == "OK"
    assert len(found["nodes"]) == 2 and sorted(found["written_by"]) == sorted(found["nodes"])
    assert sorted(found["objects"]["lic-checkpoints"]) == sorted(f"ray/probe/{node}" for node in found["nodes"])
    assert any(key.endswith(f"{found['run_id']}/artifacts/eval/probe.txt") for key in found["objects"]["lic-mlflow"]), (
        found["objects"]["lic-mlflow"]
    )
    assert found["dvc_pushed"] == 1
    assert [key.split("/")[:3] for key in found["objects"]["lic-dvc"]] == [["cache", "files", "md5"]]


@needs_stack
def test_up_again_is_a_no_op_and_taken_ports_are_refused(stack, tmp_path: Path) -> None:
    directory, ports = stack
    before = json.loads((directory / "run" / "state.json").read_text())["services"]
    again = _lic("stack", "up", "--dir", directory, *ports)
    assert again.returncode == 0, again.stderr
    assert json.loads((directory / "run" / "state.json").read_text())["services"] == before

    other = _lic("stack", "up", "--dir", tmp_path / "other", *ports)
    assert other.returncode == 1
    assert other.stderr.startswith("error: port ") and "already in use" in other.stderr
    assert "Traceback" not in other.stderr
    assert not (tmp_path / "other" / "run" / "state.json").exists()


@needs_stack
def test_the_run_folder_token_and_ray_temp_folder_are_private(stack) -> None:
    """run/ holds the token and the logs; Ray's temp folder holds its sockets: neither may be open to others,
    nor at a path another user can predict and take first."""
    directory, ports = stack
    state = json.loads((directory / "run" / "state.json").read_text())
    assert (directory / "run").stat().st_mode & 0o777 == 0o700
    assert (directory / "run" / "ray_auth_token").stat().st_mode & 0o777 == 0o600
    ray_temp = Path(state["ray_temp_dir"])
    assert ray_temp.stat().st_mode & 0o777 == 0o700 and ray_temp.stat().st_uid == os.getuid()
    assert ray_temp.name != f"lic-ray-{ports[-1]}"
    assert any(ray_temp.rglob("session_*"))  # Ray keeps its session in there


@needs_stack
def test_down_stops_every_process_and_a_second_down_is_a_no_op(stack) -> None:
    directory, _ = stack
    state = json.loads((directory / "run" / "state.json").read_text())
    processes = [Process(service["pid"], service["create_time"]) for service in state["services"]]
    members = [member for process in processes for member in process.members()]
    assert len(processes) == 4 and len(members) > 4  # each server forked helpers: mlflow's workers, raylets

    down = _lic("stack", "down", "--dir", directory)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "stopped: s3 (moto), mlflow server, ray head, ray worker node 1"
    alive = [m.pid for m in members if m.is_running() and m.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not (directory / "env.sh").exists()
    assert not Path(state["ray_temp_dir"]).exists()

    second = _lic("stack", "down", "--dir", directory)
    assert (second.returncode, second.stdout.strip()) == (0, "the local stack is not running")
    assert _lic("stack", "status", "--dir", directory).returncode == 1
