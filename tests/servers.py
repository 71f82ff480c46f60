"""Real servers for integration tests, on 127.0.0.1 and free ports: moto (S3), `mlflow server`, a Ray cluster.

Each starter is a context manager that waits until the server answers, yields how to reach it, and stops what it
started by PID (process group) at exit. Command lines, health checks and stopping are the local stack's
(`lic.stack.services`, `lic.stack.processes`), so the tests run the code `lic stack up` runs. Test modules wrap
them in fixtures of the scope they need; starting an MLflow server costs 10-20 s and a Ray node about as much on
2 cores, so share them per module or session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from lic.stack import services
from lic.stack.processes import Launch, answers_http, free_port, start, stop, wait_ready

S3_CREDENTIALS = services.S3_CREDENTIALS


@contextmanager
def _running(launch: Launch) -> Iterator[None]:
    process = start(launch)
    try:
        wait_ready(launch, process)
        yield
    finally:
        stop([process])


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """What a client process needs: credentials (moto accepts any) and the endpoint for boto3, DVC and MLflow."""
        return services.s3_env(self.endpoint)

    def storage_path(self, bucket_path: str) -> str:
        """A Ray Train storage_path on this server (pyarrow takes the endpoint in the URI)."""
        return services.ray_storage_uri(bucket_path, self.endpoint)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def moto_server(workdir: Path, buckets: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """An S3 API (moto) on 127.0.0.1 with `buckets` created."""
    port = free_port()
    with _running(services.moto(port, workdir / f"moto-{port}.log")):
        server = S3Server(f"http://127.0.0.1:{port}")
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server


@dataclass(frozen=True)
class MlflowServer:
    uri: str

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri}


@contextmanager
def mlflow_server(workdir: Path, s3: S3Server | None = None, bucket: str = "mlflow") -> Iterator[MlflowServer]:
    """`mlflow server` with a SQLite backend; artifacts in s3://bucket/artifacts on `s3`, else in workdir."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = f"s3://{bucket}/artifacts" if s3 else (workdir / "artifacts").as_uri()
    backend = f"sqlite:///{workdir / 'mlflow.db'}"
    launch = services.mlflow(port, workdir / f"mlflow-{port}.log", backend, artifacts, s3.endpoint if s3 else None)
    with _running(launch):
        yield MlflowServer(f"http://127.0.0.1:{port}")


@dataclass(frozen=True)
class RayCluster:
    address: str
    env: dict[str, str]  # what a driver needs to attach (RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH)


@contextmanager
def ray_cluster(
    workdir: Path,
    worker_nodes: int = 1,
    cpus_per_node: int = 1,
    node_env: dict[str, str] | None = None,
    own_env: list[dict[str, str]] | None = None,
) -> Iterator[RayCluster]:
    """A head and `worker_nodes` more nodes (`ray start`), token auth as Ray 2.60 wants it, stopped by PID.

    Ray's workers inherit their node's environment, not the driver's: pass `node_env` (e.g. `S3Server.env()`)
    for what they need, like S3 credentials for checkpoints, and `own_env` for what differs per node (the head
    first), like its local disk. The token is Ray's default file (~/.ray/auth_token,
    made if missing), because Ray caches the token in-process: a test process that attaches to two clusters in
    turn must present the same one.
    """
    port = free_port()
    temp = Path("/tmp") / f"ray-{port}"  # Ray's socket paths must stay short: not under pytest's deep tmp dirs
    token = Path.home() / ".ray" / "auth_token"
    if not token.exists():
        services.write_ray_token(token)
    address = f"127.0.0.1:{port}"
    try:
        with ExitStack() as nodes:
            envs = [{**(node_env or {}), **((own_env or [])[i] if i < len(own_env or []) else {})}
                    for i in range(worker_nodes + 1)]  # fmt: skip
            head = services.ray_head(port, temp, token, cpus_per_node, workdir / f"ray-{port}-head.log", envs[0])
            nodes.enter_context(_running(head))
            for i in range(1, worker_nodes + 1):
                log = workdir / f"ray-{port}-worker-{i}.log"
                nodes.enter_context(_running(services.ray_worker(address, token, cpus_per_node, log, envs[i], i)))
            yield RayCluster(address, {"RAY_ADDRESS": address, **services.ray_env(token)})
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def mlflow_model_server(workdir: Path, model_uri: str, env: dict[str, str]) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` in this environment (`--env-manager local`); yields its base URL.

    `env` reaches the registry (e.g. `MlflowServer.env()`). Ready when /ping answers, i.e. the model is loaded.
    """
    port = free_port()
    args = [str(services.BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    # the scoring server is started as `uvicorn ...` through bash: the venv's bin must be on PATH
    path = f"{services.BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path, "MLFLOW_DISABLE_TELEMETRY": "true", **env}
    log = workdir / f"model-server-{port}.log"
    with _running(Launch("mlflow models serve", args, environment, log, answers_http(f"{url}/ping"), timeout_s=240)):
        yield url
