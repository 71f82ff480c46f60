"""The typed params.yaml: one line naming key, value and what is allowed, before any stage has side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lic.errors import LicError
from lic.params import ENV_OVERRIDES, Params, load_params, parse_params
from tests.data_support import ROOT, project_params, tool_env


def test_the_project_params_validate_and_expose_typed_sections() -> None:
    params = load_params(ROOT / "params.yaml", env={})
    assert isinstance(params, Params)
    assert params.loader.crops == {256: 0.8, 512: 0.2}
    assert params.active_sources == ["sample"]
    assert params.lmbda("l0130").metric == "mse"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("loader.crop_mix", {256: 0.5, 512: 0.2}, r"loader\.crop_mix = \{256: 0\.5, 512: 0\.2\}: .*add up to 1"),
        ("loader.crop_mix", {256: 0.5, 1024: 0.5}, r"loader\.batch_size = .*crop size 1024"),
        ("lambdas.l0130.lmbda", -0.01, r"lambdas\.l0130\.lmbda = -0\.01: Input should be greater than 0"),
        ("lambdas.l0130.metric", "psnr", r"lambdas\.l0130\.metric = 'psnr': Input should be 'mse' or 'ms-ssim'"),
        ("train.storage_path", "s3:/bucket", r"train\.storage_path = 's3:/bucket': a local folder or s3\|gs"),
        ("train.storage_path", "ftp://host/x", r"train\.storage_path = 'ftp://host/x'"),
        ("train.ray.num_workers", 0, r"train\.ray\.num_workers = 0: Input should be greater than 0"),
        ("loader.crop_mix", {"big": 1.0}, r"loader\.crop_mix\.big = 'big': Input should be a valid integer"),
        ("report.anchor", "bpg", r"report\.anchor = 'bpg': one of evaluate\.anchors \(jpeg, webp, avif\)"),
        ("profile", "huge", r"profile = 'huge': one of data\.profiles"),
        ("shards.jpeg_quality", 101, r"shards\.jpeg_quality = 101: Input should be less than or equal to 100"),
        ("train.warmup_step", 2, r"train\.warmup_step: unknown key"),
    ],
)
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(key, value, message) -> None:
    with pytest.raises(LicError, match=message) as caught:
        load_params(ROOT / "params.yaml", overrides={key: value}, env={})
    assert "\n" not in str(caught.value) and str(caught.value).startswith(str(ROOT / "params.yaml"))


def test_environment_overrides_are_applied_and_validated_in_one_place() -> None:
    assert set(ENV_OVERRIDES.values()) == {"train.storage_path", "train.ray.address", "shards.remote"}
    uri = "s3://acme-lic/ray?endpoint_override=http://127.0.0.1:9000"
    params = load_params(ROOT / "params.yaml", env={"LIC_STORAGE_PATH": uri, "RAY_ADDRESS": "10.0.0.1:6379"})
    assert (params.train.storage_path, params.train.ray.address) == (uri, "10.0.0.1:6379")
    with pytest.raises(LicError, match=r"train\.storage_path = 'gs:/x'"):
        load_params(ROOT / "params.yaml", env={"LIC_STORAGE_PATH": "gs:/x"})


def test_sections_are_frozen_so_code_cannot_patch_them() -> None:
    params = parse_params(project_params())
    with pytest.raises(Exception, match="frozen"):
        params.loader.workers = 8


def test_a_bad_value_fails_before_ray_mlflow_or_dvc_do_anything(tmp_path: Path) -> None:
    """`lic train` with a broken crop mix: one line, exit 2, and no MLflow store, Ray session or checkpoint."""
    params = project_params()
    params["loader"]["crop_mix"] = {256: 0.9, 512: 0.2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**tool_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "RAY_TMPDIR": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lic.cli", "train", "--key", "l0130"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: loader.crop_mix = {256: 0.9, 512: 0.2}: shares of at least one crop size that add up to 1"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no mlflow.db, outputs/ or Ray session
