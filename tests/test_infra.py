"""infra/ for real clusters, checked offline: each file by the parser or validator of the tool that reads it.

Ray's own cluster-config validator, mlflow's own option parser and auth-config reader, systemd's unit checker, and
the bucket script and IAM policy against a moto S3 server with IAM enforcement, where Ray's, MLflow's and DVC's real
S3 clients run under the policy's credentials.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import requests
import yaml

from tests.servers import S3Server, moto_server

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BIN = Path(sys.executable).parent
BUCKETS = ("lic-checkpoints", "lic-mlflow", "lic-dvc")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


def _create_buckets(s3: S3Server, *names: str) -> subprocess.CompletedProcess:
    script = INFRA / "s3" / "create_buckets.py"
    env = {**os.environ, **s3.env()}
    return subprocess.run([sys.executable, str(script), *names], env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------------------- S3


@pytest.mark.integration
def test_bucket_script_makes_private_versioned_buckets_and_runs_again_unchanged(s3: S3Server) -> None:
    settings = "versioning on, public access blocked, SSE-S3, old versions expire after 30 days"
    first = _create_buckets(s3, *BUCKETS)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{bucket}: created; {settings}" for bucket in BUCKETS]
    second = _create_buckets(s3, *BUCKETS)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [f"{bucket}: exists; {settings}" for bucket in BUCKETS]

    client = s3.client()
    for bucket in BUCKETS:
        assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        block = client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert block == dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
        )
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        (rule,) = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    # Versioning does what it is for: an overwritten checkpoint can be restored.
    for body in (b"step 100", b"step 200"):
        client.put_object(Bucket="lic-checkpoints", Key="ray/l0130/checkpoint/model.pt", Body=body)
    versions = client.list_object_versions(Bucket="lic-checkpoints", Prefix="ray/l0130/")["Versions"]
    assert len(versions) == 2


def _policy() -> dict:
    return json.loads((INFRA / "s3" / "iam-policy.json").read_text())


# What each part of the pipeline does on S3, as IAM actions (https://docs.aws.amazon.com/service-authorization/
# latest/reference/list_amazons3.html): Ray Train writes checkpoints, reads them to resume and deletes those past
# CheckpointConfig.num_to_keep (pyarrow, multipart for large files); the MLflow server logs, serves and deletes
# artifacts (boto3); DVC pushes and pulls content-addressed files and never deletes (s3fs). Every client lists
# and finds the bucket's region.
NEEDED = {
    "lic-checkpoints": {"GetObject", "PutObject", "DeleteObject", "AbortMultipartUpload", "ListMultipartUploadParts"},
    "lic-mlflow": {"GetObject", "PutObject", "DeleteObject", "AbortMultipartUpload", "ListMultipartUploadParts"},
    "lic-dvc": {"GetObject", "PutObject", "AbortMultipartUpload", "ListMultipartUploadParts"},
}
BUCKET_LEVEL = {"ListBucket", "GetBucketLocation"}


def _granted(policy: dict) -> dict[str, set[str]]:
    """Resource ARN -> the actions granted on it."""
    granted: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            granted.setdefault(resource, set()).update(action.removeprefix("s3:") for action in actions)
    return granted


def test_iam_policy_grants_what_the_pipeline_does_and_nothing_more() -> None:
    policy = _policy()
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) == {"Sid", "Effect", "Action", "Resource"}
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(re.fullmatch(r"s3:[A-Za-z]+", action) for action in actions), actions  # no wildcard action
    expected = {f"arn:aws:s3:::{bucket}/*": actions for bucket, actions in NEEDED.items()}
    expected |= {f"arn:aws:s3:::{bucket}": BUCKET_LEVEL for bucket in NEEDED}
    assert _granted(policy) == expected  # exactly: every resource is one bucket or its objects, no "*"


def _as_moto_enforces(policy: dict) -> dict:
    """The same permissions in moto's dialect. moto authorizes HEAD Bucket as `s3:HeadBucket` (AWS: s3:ListBucket)
    and a multi-object delete against the bucket ARN (AWS: s3:DeleteObject on each object)."""
    policy = copy.deepcopy(policy)
    extra = []
    for statement in policy["Statement"]:
        if "s3:ListBucket" in statement["Action"]:
            statement["Action"].append("s3:HeadBucket")
        if "s3:DeleteObject" in statement["Action"]:
            bucket = statement["Resource"].removesuffix("/*")
            extra.append({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": bucket})
    policy["Statement"] += extra
    return policy


@pytest.fixture
def pipeline_credentials(tmp_path: Path) -> Iterator[tuple[S3Server, dict[str, str]]]:
    """A moto server that enforces IAM, the pipeline's buckets plus another, and keys of a user holding the policy."""
    import boto3

    with moto_server(tmp_path, (*BUCKETS, "somebody-elses")) as server:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1", **_keys(os.environ))
        iam.create_user(UserName="pipeline")
        iam.put_user_policy(
            UserName="pipeline", PolicyName="loclic", PolicyDocument=json.dumps(_as_moto_enforces(_policy()))
        )
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        # From here on moto checks every request's signature and the policies of its key.
        requests.post(f"{server.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        yield (
            server,
            {
                **server.env(),
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            },
        )


def _keys(env) -> dict[str, str]:
    return {
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID", "testing"),
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", "testing"),
    }


@pytest.mark.integration
def test_iam_policy_is_enough_for_rays_mlflows_and_dvcs_s3_clients_and_denies_the_rest(
    pipeline_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from botocore.exceptions import ClientError
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
    from ray.train.v2._internal.execution.storage import (
        _download_from_fs_path,
        _list_at_fs_path,
        _upload_to_fs_path,
        delete_fs_path,
        get_fs_and_path,
    )

    server, env = pipeline_credentials
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(os.urandom(4096))

    # Ray Train's own storage functions on LIC_STORAGE_PATH: upload, list, resume (download), prune (delete).
    fs, root = get_fs_and_path(server.storage_path("lic-checkpoints/ray"))
    _upload_to_fs_path(str(checkpoint), fs, f"{root}/l0130/checkpoint_000")
    assert _list_at_fs_path(fs, f"{root}/l0130") == ["checkpoint_000"]
    _download_from_fs_path(fs, f"{root}/l0130/checkpoint_000", str(tmp_path / "resumed"))
    assert (tmp_path / "resumed" / "model.pt").read_bytes() == (checkpoint / "model.pt").read_bytes()
    delete_fs_path(fs, f"{root}/l0130/checkpoint_000")  # logs, does not raise, when denied
    assert _list_at_fs_path(fs, f"{root}/l0130") == []

    # The MLflow server's artifact store: log, list, download, delete with the run.
    repository = S3ArtifactRepository("s3://lic-mlflow/artifacts/1/run/artifacts")
    repository.log_artifacts(str(checkpoint), "model")
    assert [item.path for item in repository.list_artifacts("model")] == ["model/model.pt"]
    (tmp_path / "served").mkdir()
    assert Path(repository.download_artifacts("model/model.pt", str(tmp_path / "served"))).stat().st_size == 4096
    repository.delete_artifacts("model")
    assert repository.list_artifacts("model") == []

    # DVC push and pull through the remote (its Python API: the same S3 code as the CLI, without 5 start-ups).
    from dvc.repo import Repo

    project = tmp_path / "project"
    project.mkdir()
    (project / "shards.beton").write_bytes(os.urandom(4096))
    monkeypatch.chdir(project)  # DVC resolves paths from the working directory
    repo = Repo.init(project, no_scm=True)
    with repo.config.edit("local") as config:
        config["remote"]["team"] = {"url": "s3://lic-dvc/cache"}
        config["core"]["remote"] = "team"
    repo.add("shards.beton")
    assert repo.push() == 1
    shutil.rmtree(project / ".dvc" / "cache")
    (project / "shards.beton").unlink()
    assert repo.pull()["stats"]["fetched"] == 1 and (project / "shards.beton").stat().st_size == 4096
    repo.close()

    # And nothing else: other buckets, deleting from the DVC remote, bucket administration.
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", **_keys(env))
    denied = {
        "put into another bucket": lambda: client.put_object(Bucket="somebody-elses", Key="x", Body=b"x"),
        "read another bucket": lambda: client.list_objects_v2(Bucket="somebody-elses"),
        "delete from the DVC remote": lambda: client.delete_object(Bucket="lic-dvc", Key="cache/files/md5/x"),
        "create a bucket": lambda: client.create_bucket(Bucket="new-bucket"),
        "change a bucket policy": lambda: client.put_bucket_policy(Bucket="lic-dvc", Policy=json.dumps(_policy())),
        "turn versioning off": lambda: client.put_bucket_versioning(
            Bucket="lic-checkpoints", VersioningConfiguration={"Status": "Suspended"}
        ),
    }
    for what, call in denied.items():
        with pytest.raises(ClientError, match="AccessDenied"):
            call()
            pytest.fail(f"the policy allows: {what}")
    script = [sys.executable, str(INFRA / "s3" / "create_buckets.py"), "somebody-elses"]
    refused = subprocess.run(script, env=os.environ, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == "error: bucket somebody-elses exists and these credentials may not use it (names are global)"
    )


# --------------------------------------------------------------------------------------------------------- Ray


def _cluster_config() -> dict:
    return yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())


def test_ray_cluster_config_passes_rays_own_validator() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _cluster_config()
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before it talks to AWS
    validate_config(prepared)
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # the validator is not a rubber stamp
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)

    head = config["available_node_types"][config["head_node_type"]]
    gpu = config["available_node_types"]["gpu_worker"]
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # a CPU head
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU worker group
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]  # scales to zero and back
    setup = "\n".join(config["setup_commands"])
    assert "make setup" in setup and "RAY_AUTH_MODE=token" in setup  # the locked environment; token auth
    assert config["file_mounts"]["~/loclic"] == "."
    for command in config["setup_commands"]:
        assert subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0, command
    example = INFRA / "ray" / "cluster.env.example"
    assert config["file_mounts"]["~/.loclic.env"] == str(example.relative_to(ROOT)).removesuffix(".example")
    assert example.exists()


def test_rayjob_runs_one_train_stage_on_a_token_authenticated_gpu_cluster(project_root: Path) -> None:
    import ray

    account, job = yaml.safe_load_all((INFRA / "ray" / "rayjob-train.yaml").read_text())
    assert (account["kind"], job["apiVersion"], job["kind"]) == ("ServiceAccount", "ray.io/v1", "RayJob")
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray and the operator's idea of it agree
    assert cluster["authOptions"] == {"mode": "token"}
    assert spec["shutdownAfterJobFinishes"] is True

    (key,) = re.findall(r"lic train --key (\w+)", spec["entrypoint"])
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    assert key in params["lambdas"]
    assert "dvc pull" not in spec["entrypoint"]  # no data on the head: the workers stage their own shards
    assert subprocess.run(["bash", "-n", "-c", spec["entrypoint"]], capture_output=True).returncode == 0

    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    stage_dir = {e["name"]: e["value"] for e in worker["containers"][0]["env"]}["LIC_STAGE_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in worker["containers"][0]["volumeMounts"]}
    (volume,) = [v for v in worker["volumes"] if v["name"] == mounts[stage_dir]]
    size_gib = int(volume["emptyDir"]["sizeLimit"].removesuffix("Gi"))
    assert size_gib * 2**30 >= 185e9 / workers["replicas"] * 1.1  # the node's share of the full shard set
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert head["containers"][0]["image"] == worker["containers"][0]["image"]
    assert head["serviceAccountName"] == worker["serviceAccountName"] == account["metadata"]["name"]


def test_dockerfile_copies_what_exists_on_debian_12_with_python_311() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", dockerfile, re.M)
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in sources.split():
            assert source == "." or (ROOT / source).exists(), source


# ------------------------------------------------------------------------------------------------------ MLflow


def _env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile syntax: NAME=value lines, comments on lines of their own."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            assert "#" not in value, f"systemd would keep this comment in the value: {line}"
            pairs[name] = value
    return pairs


def _unit(path: Path) -> dict[str, str]:
    """The [Service] keys of a unit file, with backslash-continued lines joined as systemd joins them."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    service = text.split("[Service]")[1].split("\n[")[0]
    return dict(line.split("=", 1) for line in service.splitlines() if line and not line.startswith("#"))


def test_mlflow_unit_passes_systemd_and_its_command_line_passes_mlflows_parser(tmp_path: Path) -> None:
    from mlflow.cli import server

    unit_path = INFRA / "mlflow" / "mlflow.service"
    env = _env_file(INFRA / "mlflow" / "mlflow.env.example")
    exec_start = _unit(unit_path)["ExecStart"]
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    assert used <= set(env), used - set(env)
    assert {"PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)
    assert env["MLFLOW_HOST"] not in ("0.0.0.0", "::")

    args = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start))
    assert args[0].endswith("/bin/mlflow") and args[1] == "server"
    context = server.make_context("server", args[2:])  # mlflow's own options and types
    assert context.params["app_name"] == "basic-auth"
    assert context.params["backend_store_uri"].startswith("postgresql://")
    assert context.params["artifacts_destination"] == "s3://lic-mlflow/artifacts"
    assert context.params["serve_artifacts"] is True  # clients need no S3 credentials

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / "mlflow.service"  # verify wants the ExecStart binary to exist: point it at ours
    local.write_text(unit_path.read_text().replace(args[0], str(BIN / "mlflow")))
    verify = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr


def _mlflow_auth_module(name: str) -> ModuleType:
    """mlflow.server.auth.<name>, loaded from its file: the package's __init__ (the auth app) refuses to import
    without Flask-WTF, which only the server's environment has (infra/mlflow/requirements.txt)."""
    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mlflow_auth_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_auth_config_is_read_by_mlflow_and_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    read_auth_config = _mlflow_auth_module("config").read_auth_config
    permissions = _mlflow_auth_module("permissions").ALL_PERMISSIONS

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(INFRA / "mlflow" / "basic_auth.ini"))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    assert config.default_permission in permissions
    assert config.database_uri.startswith("postgresql://") and "@" in config.database_uri
    assert ":" not in config.database_uri.removeprefix("postgresql://").split("@")[0]  # no password in the URI
    assert config.admin_password is None  # it comes from MLFLOW_AUTH_ADMIN_PASSWORD at first start


def test_mlflow_server_requirements_stay_on_the_projects_versions() -> None:
    lock = {
        line.split("==")[0].lower() for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line
    }
    for line in (INFRA / "mlflow" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[\[=<>]", line)[0].lower()
            assert name in lock or "==" in line, f"{line}: neither pinned here nor by requirements.lock"
