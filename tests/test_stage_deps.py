"""dvc.yaml's code dependencies cannot drift from the code: every `lic` module a stage loads is one of its deps.

For each stage, the entry point is imported in a fresh interpreter (what it loads at start), and the imports
written inside functions of every loaded module are followed too (what it loads while it runs: FFCV's writer,
the download code), transitively. A module counts as covered when its file, or a folder above it, is a dep of
the stage. A few modules are exempt on purpose, each with its reason (also in dvc.yaml's header comment).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Modules that cannot change a stage's output, so editing them does not re-run the pipeline (nor re-download).
EXEMPT = {
    "lic/__init__.py": "the version string",
    "lic/errors.py": "the user-error type",
    "lic/params.py": "parses and validates params.yaml; the values reach stages through their params: deps",
    "lic/io/progress.py": "progress lines on the terminal",
    "lic/io/atomic.py": "how a file is written (atomically), not what it holds",
    "lic/data/download.py": "transport: fixing a retry must not re-download 100 GB",
    "pipelines/stage.py": "loads params.yaml and turns user errors into one line",
    "lic/data/engine.py": "starts or joins Ray: where the work runs, not what it makes",
    "lic/registry/__init__.py": "lazy re-exports of the registry package",
    "lic/registry/tracking.py": "which MLflow store a run logs to, not what it trains",
}


def stage_entry_points() -> dict[str, Path]:
    """Stage name -> the pipelines/ module its cmd runs (`python -m pipelines.<name> ...`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entries = {}
    for name, stage in stages.items():
        command = (stage.get("do") or stage)["cmd"]
        if command.startswith("python -m pipelines."):
            entries[name] = ROOT / "pipelines" / f"{command.split()[2].split('.')[1]}.py"
    return entries


def stage_deps(name: str) -> list[str]:
    """The stage's code deps as written (templated folders such as sources/${item.adapter}.py kept as a glob)."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    deps = (stage.get("do") or stage)["deps"]
    return [dep.replace("${item.adapter}", "*") for dep in deps if dep.startswith(("lic/", "pipelines/"))]


@functools.cache
def loaded_at_start() -> dict[Path, set[str]]:
    """Entry point -> the lic modules (project-relative files) importing it loads, each in a fresh interpreter
    (all started at once: each import of torch and MLflow takes seconds)."""
    probe = (
        "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
        "print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items()) "
        "if n.split('.')[0] in ('lic', 'pipelines') and getattr(m, '__file__', None))))"
    )
    entries = sorted(set(stage_entry_points().values()))
    probes = {
        entry: subprocess.Popen(
            [sys.executable, "-c", probe, f"pipelines.{entry.stem}"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for entry in entries
    }
    loaded = {}
    for entry, process in probes.items():
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"importing {entry} failed"
        loaded[entry] = {Path(path).resolve().relative_to(ROOT).as_posix() for path in json.loads(out)}
    return loaded


# Every module's imports (function bodies included) and whether it is only a docstring, read with `ast` in a fresh
# interpreter: CPython 3.11.7's ast.parse can fail with "AST constructor recursion depth mismatch" while other
# threads parse too (gh-106905), which the threads that earlier tests leave behind did in a full `make test`.
_SYNTAX_PROBE = """
import ast, json, pathlib, sys
out = {}
for path in sys.argv[1:]:
    tree = ast.parse(pathlib.Path(path).read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    docstring_only = all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in tree.body)
    out[path] = {"imports": names, "docstring_only": docstring_only}
print(json.dumps(out))
"""


@functools.cache
def syntax() -> dict[str, dict]:
    """Project file -> {"imports": module names it imports anywhere, "docstring_only": bool}."""
    files = sorted(
        p.relative_to(ROOT).as_posix() for folder in ("lic", "pipelines") for p in ROOT.glob(f"{folder}/**/*.py")
    )
    done = subprocess.run(
        [sys.executable, "-c", _SYNTAX_PROBE, *files], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def imported_by(path: str) -> set[str]:
    """The lic modules `path` imports anywhere in its text, function bodies included, as project files."""
    names = [name for name in syntax()[path]["imports"] if name.split(".")[0] == "lic"]
    return {file for name in names for file in _module_files(name) if file}


def _module_files(name: str) -> list[str]:
    parts = name.split(".")
    candidates = [ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")]
    packages = [ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts))]
    return [p.relative_to(ROOT).as_posix() for p in (*candidates, *packages) if p.is_file()]


@functools.cache
def loaded_by(entry: Path, dynamic: tuple[str, ...] = ()) -> set[str]:
    """What a stage loads: at start, the modules it picks by name (`dynamic`: fetch's source adapters, through
    importlib), and through every import written in a loaded module, transitively."""
    todo = loaded_at_start()[entry] | imported_by(entry.relative_to(ROOT).as_posix()) | set(dynamic)
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo |= imported_by(path) - seen
    return seen


def covered(path: str, deps: list[str]) -> bool:
    if path.endswith("__init__.py") and _only_a_docstring(path):
        return True  # a package's docstring decides nothing
    return any(path == dep or (dep.endswith("/") and path.startswith(dep)) or Path(path).match(dep) for dep in deps)


def _only_a_docstring(path: str) -> bool:
    return syntax()[path]["docstring_only"]


@pytest.mark.parametrize("stage", sorted(stage_entry_points()))
def test_every_module_a_stage_loads_is_one_of_its_deps(stage: str) -> None:
    deps = stage_deps(stage)
    templated = tuple(sorted(p.relative_to(ROOT).as_posix() for dep in deps if "*" in dep for p in ROOT.glob(dep)))
    loaded = loaded_by(stage_entry_points()[stage], templated)
    missing = sorted(p for p in loaded if p not in EXEMPT and not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} loads modules its deps do not cover: {missing}"


@pytest.mark.parametrize("stage", sorted(stage_entry_points()))
def test_every_code_dep_exists(stage: str) -> None:
    for dep in stage_deps(stage):
        assert list(ROOT.glob(dep.rstrip("/"))), f"dvc.yaml stage {stage!r} depends on {dep}, which does not exist"


def test_removing_a_dep_is_caught(tmp_path: Path) -> None:
    """The check can fail: with lic/models/ dropped from evaluate's deps, the evaluation's model code is uncovered."""
    deps = [dep for dep in stage_deps("evaluate") if dep != "lic/models/"]
    loaded = loaded_by(stage_entry_points()["evaluate"])
    assert "lic/models/loclic.py" in loaded and not covered("lic/models/loclic.py", deps)
