"""`lic stack up|down|status`: the servers a pipeline run needs, on this machine, for one shell session.

`up` starts an S3 API (moto) with the pipeline's buckets (made by infra/s3/create_buckets.py, the script used
for real S3), an `mlflow server` whose artifacts go to that S3, and a Ray cluster of a head and worker nodes;
it then writes `env.sh`, which a shell sources to point the pipeline at them. `down` stops exactly what `up`
started, by PID. The stack keeps nothing across `down`: moto holds its objects in memory, so `up` also starts a
fresh MLflow store (a tracking store whose artifacts are gone would only mislead).

Files, under `--dir` (default infra/local, git-ignored): `env.sh`, and `run/` with `state.json` (the PIDs),
the logs, the MLflow database and the Ray token. run/ is its owner's alone (0700, the token 0600), and so is
the folder Ray's sessions and sockets go in: a fresh `/tmp/lic-ray-XXXXXXXX` (0700) per `up`, since Ray makes
its own folders world-writable and a fixed path could be created first by another user.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import lic
from lic.errors import LicError
from lic.io.atomic import write_text
from lic.stack import services
from lic.stack.processes import Launch, Process, port_in_use, start, stop, tail, wait_ready

BUCKETS = ("lic-checkpoints", "lic-mlflow", "lic-dvc")
CHECKPOINTS = "lic-checkpoints/ray"  # LIC_STORAGE_PATH: Ray Train run folders
ARTIFACTS = "s3://lic-mlflow/artifacts"  # where the MLflow server puts artifacts
DVC_REMOTE = "s3://lic-dvc/cache"  # LIC_DVC_REMOTE
BUCKET_SCRIPT = Path(lic.__file__).resolve().parents[1] / "infra" / "s3" / "create_buckets.py"


@dataclass(frozen=True)
class Ports:
    s3: int = 9000
    mlflow: int = 5000
    ray: int = 6379


@dataclass(frozen=True)
class Service:
    """One running server of the stack, as recorded in state.json."""

    name: str
    pid: int
    create_time: float
    port: int | None
    log: str

    @property
    def process(self) -> Process:
        return Process(self.pid, self.create_time)


class Stack:
    """The stack kept under `directory`: env.sh, and run/ with state.json, the logs and the data."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.run = self.directory / "run"
        self.state_file = self.run / "state.json"
        self.env_file = self.directory / "env.sh"

    def _state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def services(self) -> list[Service]:
        return [Service(**service) for service in self._state().get("services", [])]

    def environment(self) -> dict[str, str]:
        """The variables env.sh exports (empty until every server is ready)."""
        return self._state().get("env", {})

    def up(self, ports: Ports = Ports(), worker_nodes: int = 1, cpus_per_node: int = 1) -> dict[str, str]:
        """Start the stack (a no-op when it already runs) and return the environment written to env.sh."""
        running = self.services()
        if running and self.environment() and all(service.process.leader() for service in running):
            self._write_env_file(self.environment())
            return self.environment()
        if running:
            self.down()  # what is left of a stack that lost a server, or of an interrupted `up`: start over
        taken = [f"{port} ({name})" for name, port in asdict(ports).items() if port_in_use(port)]
        if taken:
            raise LicError(
                f"port {', '.join(taken)} already in use on this machine; stop what holds it, "
                "or choose others: lic stack up --s3-port/--mlflow-port/--ray-port"
            )
        shutil.rmtree(self.run, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(mode=0o700)
        try:
            env = self._start(ports, worker_nodes, cpus_per_node)
        except BaseException:
            self.down()
            raise
        self._write_env_file(env)
        return env

    def _start(self, ports: Ports, worker_nodes: int, cpus_per_node: int) -> dict[str, str]:
        state: dict = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            # Private (mkdtemp: 0700, unpredictable) and short: Ray's socket paths must stay under 108 bytes.
            "ray_temp_dir": tempfile.mkdtemp(prefix="lic-ray-", dir="/tmp"),
            "services": [],
        }

        def launch(what: Launch, port: int | None) -> tuple[Launch, Process]:
            process = start(what)
            service = Service(what.name, process.pid, process.create_time, port, str(what.log))
            state["services"].append(asdict(service))
            write_text(self.state_file, json.dumps(state, indent=2) + "\n")  # down can stop it from now on
            return what, process

        endpoint = f"http://127.0.0.1:{ports.s3}"
        wait_ready(*launch(services.moto(ports.s3, self.run / "s3.log"), ports.s3))
        create_buckets(endpoint, self.run / "buckets.log")
        # mlflow takes longest to start: it starts while the Ray nodes come up.
        database = f"sqlite:///{(self.run / 'mlflow.db').resolve()}"
        mlflow_log = self.run / "mlflow.log"
        mlflow = launch(services.mlflow(ports.mlflow, mlflow_log, database, ARTIFACTS, endpoint), ports.mlflow)
        token = services.write_ray_token(self.run / "ray_auth_token").resolve()
        node_env = services.s3_env(endpoint)  # a real node's S3 access comes from its machine (an instance role)
        temp_dir = Path(state["ray_temp_dir"]) / "ray"  # Ray makes this one 0777; its private parent guards it
        head = services.ray_head(ports.ray, temp_dir, token, cpus_per_node, self.run / "ray-head.log", node_env)
        wait_ready(*launch(head, ports.ray))
        address = f"127.0.0.1:{ports.ray}"
        workers = []
        for i in range(1, worker_nodes + 1):
            log = self.run / f"ray-worker-{i}.log"
            workers.append(launch(services.ray_worker(address, token, cpus_per_node, log, node_env, i), None))
        for pending in [mlflow, *workers]:
            wait_ready(*pending)
        state["env"] = {
            "RAY_ADDRESS": address,
            **services.ray_env(token),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
            **services.s3_env(endpoint),
            "LIC_STORAGE_PATH": services.ray_storage_uri(CHECKPOINTS, endpoint),
            "LIC_DVC_REMOTE": DVC_REMOTE,
        }
        write_text(self.state_file, json.dumps(state, indent=2) + "\n")
        return state["env"]

    def _write_env_file(self, env: dict[str, str]) -> None:
        lines = [
            "# The local stack, written by `lic stack up`; `lic stack down` removes it.",
            "# Source it (. infra/local/env.sh) to point the pipeline at the stack's servers.",
            *(f"export {name}={shlex.quote(value)}" for name, value in env.items()),
        ]
        write_text(self.env_file, "\n".join(lines) + "\n")

    def down(self) -> list[str]:
        """Stop what `up` started (a no-op when nothing runs); returns the names of what was still running."""
        recorded = self.services()
        running = [service.name for service in recorded if service.process.members()]
        stop([service.process for service in reversed(recorded)])
        ray_temp_dir = self._state().get("ray_temp_dir")
        if ray_temp_dir:
            shutil.rmtree(ray_temp_dir, ignore_errors=True)
        self.env_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        return running

    def status(self) -> list[tuple[Service, bool]]:
        """Each recorded server and whether it still runs."""
        return [(service, service.process.leader() is not None) for service in self.services()]


def create_buckets(endpoint: str, log: Path) -> None:
    """Make the stack's buckets with the script real deployments use, against the local S3 API."""
    if not BUCKET_SCRIPT.exists():
        raise LicError(f"{BUCKET_SCRIPT} is missing: the local stack runs from a source checkout of the project")
    env = {**os.environ, **services.s3_env(endpoint)}
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, str(BUCKET_SCRIPT), *BUCKETS], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise LicError(f"creating the buckets failed; see {log}:\n{tail(log)}")
