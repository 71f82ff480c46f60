"""The project installs as one package with a working `lic` command and a lock file that matches pyproject."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def _lock(root: Path) -> dict[str, Version]:
    pins = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(3))
    return pins


def test_import_lic() -> None:
    import lic

    assert re.fullmatch(r"\d+\.\d+\.\d+", lic.__version__)


def test_cli_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "lic.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "Commands" in out
    assert "doctor" in out


def test_doctor_reports_a_working_stack() -> None:
    proc = subprocess.run([sys.executable, "-m", "lic.cli", "doctor"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout


def test_lock_satisfies_every_pyproject_requirement(project_root: Path) -> None:
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("test", "dev"):
        requirements += project["optional-dependencies"][extra]
    pins = _lock(project_root)
    problems = []
    for spec in map(Requirement, requirements):
        name = canonicalize_name(spec.name)
        if name not in pins:
            problems.append(f"{spec.name} is missing from requirements.lock")
        elif not spec.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{spec.name}: lock has {pins[name]}, pyproject asks {spec.specifier}")
    assert not problems, "\n".join(problems)


def test_lock_honours_the_stack_constraints(project_root: Path) -> None:
    pins = _lock(project_root)
    problems = []
    for line in (project_root / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec = Requirement(line)
        pinned = pins.get(canonicalize_name(spec.name))
        if pinned is None or not spec.specifier.contains(pinned, prereleases=True):
            problems.append(f"{line}: lock has {pinned}")
    assert not problems, "\n".join(problems)


def test_installed_versions_match_the_lock(project_root: Path) -> None:
    from importlib.metadata import version

    pins = _lock(project_root)
    for name in ("torch", "numpy", "compressai", "ffcv", "ray", "mlflow", "dvc"):
        installed = Version(version(name)).base_version
        assert installed == pins[canonicalize_name(name)].base_version, name
