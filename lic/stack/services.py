"""The servers of the local stack, as `Launch`es: command line, environment, log and readiness check.

Everything binds to 127.0.0.1 except Ray, whose `ray start` has no bind address (it listens on all interfaces
and replaces 127.0.0.1 by the host's address); token authentication guards it instead (stack-notes 2.6).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from lic.io.atomic import write_text
from lic.stack.processes import Launch, answers_http, log_says

BIN = Path(sys.executable).parent
# moto accepts any credentials; these are what clients of the local S3 API present.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
RAY_STARTED = "Ray runtime started."  # what `ray start` prints once the node has joined


def s3_env(endpoint: str) -> dict[str, str]:
    """What an S3 client of the local API needs: boto3, s3fs (DVC) and the AWS CLI read AWS_ENDPOINT_URL, MLflow
    its own variable; pyarrow (Ray) reads neither and takes the endpoint in the URL (see `ray_storage_uri`)."""
    return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def ray_storage_uri(bucket_path: str, endpoint: str) -> str:
    """A Ray Train `storage_path` on an S3 API at a plain-http endpoint (pyarrow's URI options)."""
    return f"s3://{bucket_path}?endpoint_override={endpoint}&scheme=http"


def moto(port: int, log: Path) -> Launch:
    """An in-memory S3 API: what it stores is gone when it stops."""
    return Launch(
        name="s3 (moto)",
        args=[str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **S3_CREDENTIALS},
        log=log,
        ready=answers_http(f"http://127.0.0.1:{port}/moto-api/"),
        timeout_s=60,
    )


def mlflow(port: int, log: Path, backend_uri: str, artifacts: str, s3_endpoint: str | None = None) -> Launch:
    """`mlflow server` that proxies artifacts (clients need no S3 credentials); one worker is plenty locally."""
    # Job execution (MLflow's GenAI background jobs) forks seven huey consumers; the pipeline has no use for them.
    quiet = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env = {**os.environ, **quiet, **(s3_env(s3_endpoint) if s3_endpoint else {})}
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return Launch("mlflow server", args, env, log, answers_http(f"http://127.0.0.1:{port}/health"), timeout_s=120)


def ray_env(token_path: Path) -> dict[str, str]:
    """Token auth with this cluster's own token (not ~/.ray/auth_token), for the nodes and every driver."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def write_ray_token(path: Path) -> Path:
    """A fresh 256-bit token, readable by its owner only from the moment the file exists."""
    write_text(path, secrets.token_hex(32), mode=0o600)
    return path


def _ray_node(name: str, args: list[str], token_path: Path, cpus: int, log: Path, node_env: dict[str, str]) -> Launch:
    # --block keeps `ray start` in the foreground as the group leader: stopping it stops the node's processes.
    # No drain on SIGTERM: the whole cluster stops together, nobody is left to hand work to.
    env = {**os.environ, **node_env, **ray_env(token_path), "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    args = [str(BIN / "ray"), "start", "--block", f"--num-cpus={cpus}", "--disable-usage-stats", *args]
    return Launch(name, args, env, log, log_says(log, RAY_STARTED), timeout_s=120)


def ray_head(port: int, temp_dir: Path, token_path: Path, cpus: int, log: Path, node_env: dict[str, str]) -> Launch:
    """The head node (GCS on `port`), without the dashboard: drivers attach through RAY_ADDRESS directly.

    Ray's workers inherit the node's environment, not the driver's: `node_env` is what a real node has from its
    machine (S3 credentials and endpoint), so Ray Train workers can write checkpoints to S3.
    """
    args = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"]
    return _ray_node("ray head", args, token_path, cpus, log, node_env)


def ray_worker(
    address: str, token_path: Path, cpus: int, log: Path, node_env: dict[str, str], index: int = 1
) -> Launch:
    """One more node joining the head at `address`."""
    return _ray_node(f"ray worker node {index}", [f"--address={address}"], token_path, cpus, log, node_env)
