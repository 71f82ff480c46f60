"""Profiles and rate points as DVC sees them: `lic profile full` gives twelve train@ stages, `lic profile sample`
restores params.yaml byte for byte, and a new rate point is one `dvc exp run -S`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lic.errors import LicError
from lic.profiles import apply_profile, profile_values
from tests.data_support import ROOT, dvc_project, run, tool_env

MLIC_PLUS_PLUS = {"mse": [0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483],
                  "ms-ssim": [2.4, 4.58, 8.73, 16.64, 31.73, 60.5]}  # fmt: skip


@pytest.fixture
def project(tmp_path) -> Path:
    directory = dvc_project(tmp_path / "project")
    run(["git", "add", "-A"], directory)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], directory)
    return directory


def lic_profile(name: str, project: Path) -> subprocess.CompletedProcess:
    """`lic profile NAME` on the project's params.yaml (run from outside it: its partial copy of lic/ would shadow
    the installed one)."""
    command = [sys.executable, "-m", "lic.cli", "profile", name, "--params", str(project / "params.yaml")]
    return subprocess.run(command, cwd=project.parent, env=tool_env(), capture_output=True, text=True, timeout=120)


def stages(project: Path, group: str) -> list[str]:
    listed = run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], project).stdout.split()
    return [name for name in listed if name.startswith(f"{group}@")]


def test_the_full_profile_trains_mlic_plus_plus_twelve_rate_points_each_its_own_stage(project) -> None:
    original = (project / "params.yaml").read_text()
    assert stages(project, "train") == ["train@l0018", "train@l0130"]

    switched = lic_profile("full", project)
    assert switched.returncode == 0, switched.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["profile"] == "full"
    by_metric = {metric: sorted(e["lmbda"] for e in params["lambdas"].values() if e["metric"] == metric)
                 for metric in MLIC_PLUS_PLUS}  # fmt: skip
    assert by_metric == MLIC_PLUS_PLUS
    assert len(stages(project, "train")) == 12 and len(stages(project, "evaluate")) == 12
    untouched = {k: v for k, v in yaml.safe_load(original).items() if k not in ("profile", "lambdas")}
    assert {k: v for k, v in params.items() if k not in ("profile", "lambdas")} == untouched

    apply_profile("sample", project / "params.yaml")  # what `lic profile sample` runs
    assert (project / "params.yaml").read_text() == original  # comments and layout kept
    assert stages(project, "train") == ["train@l0018", "train@l0130"]


def test_an_unknown_profile_is_a_user_error(project) -> None:
    before = (project / "params.yaml").read_text()
    with pytest.raises(LicError, match="unknown profile 'huge'; use one of sample, full"):
        apply_profile("huge", project / "params.yaml")
    assert (project / "params.yaml").read_text() == before


def test_a_new_rate_point_is_one_dvc_exp_run(project) -> None:
    """The command of docs/training.md, `dvc exp run -S '+lambdas.l0060={lmbda: 0.006, metric: mse}'`, through
    the function `-S` calls (dvc.utils.hydra.apply_overrides): running the experiment itself would train. DVC needs
    `+` for a key params.yaml lacks, and both fields (the stage's description reads item.metric)."""
    from dvc.utils.hydra import apply_overrides

    params = project / "params.yaml"
    with pytest.raises(Exception, match="Invalid `--set-param` value") as refused:  # what users met without '+'
        apply_overrides(params, ["lambdas.l0060.lmbda=0.006"])
    assert "To append to your config use +lambdas.l0060" in str(refused.value.__cause__)
    apply_overrides(params, ["+lambdas.l0060={lmbda: 0.006, metric: mse}"])
    assert yaml.safe_load(params.read_text())["lambdas"]["l0060"] == {"lmbda": 0.006, "metric": "mse"}
    assert stages(project, "train") == ["train@l0018", "train@l0130", "train@l0060"]
    assert "evaluate@l0060" in stages(project, "evaluate")


def test_the_shipped_params_are_the_sample_profile() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert {"profile": params["profile"], "lambdas": params["lambdas"]} == profile_values("sample")
