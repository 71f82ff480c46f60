"""`lic summary`, the last thing `make pipeline` prints: RD tables, plots, registered models, how to pull one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.data_support import project_params


def _params() -> str:
    """The project's params with the report and the registry record under out/."""
    params = project_params()
    params["report"]["out_dir"] = "out/report"
    params["registry"]["record"] = "out/registered.json"
    return yaml.safe_dump(params, sort_keys=False)


def _summary(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lic.cli", "summary"], cwd=cwd, capture_output=True, text=True)


def test_summary_names_tables_plots_models_and_how_to_pull(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(_params())
    (tmp_path / "out/report").mkdir(parents=True)
    (tmp_path / "out/report/report.md").write_text(
        "# RD\n\nprose\n\n## sample (3 images)\n\n| codec | bpp |\n|---|---|\n"
    )
    decision = {"promoted": True, "reason": "first"}
    record = {"l0130": {"name": "loclic-mse-0.013", "uri": "models:/loclic-mse-0.013/1", "decision": decision}}
    (tmp_path / "out/registered.json").write_text(json.dumps(record))
    out = _summary(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "| codec | bpp |" in out.stdout and "prose" not in out.stdout
    assert "out/report/figures" in out.stdout
    assert "models:/loclic-mse-0.013/1  (champion)" in out.stdout
    assert "lic pull models:/loclic-mse-0.013@champion" in out.stdout


def test_summary_after_a_rerun_of_register_names_the_versions_it_found(tmp_path: Path) -> None:
    """Registering an already registered checkpoint records no decision, but whether it is champion; the record
    names the store it used, which the commands carry (adapted: the record now says whether it is champion)."""
    (tmp_path / "params.yaml").write_text(_params())
    (tmp_path / "out/report").mkdir(parents=True)
    (tmp_path / "out/report/report.md").write_text("## sample (3 images)\n\n| codec | bpp |\n")
    uri, store = "models:/loclic-mse-0.013/1", "http://127.0.0.1:5123"
    entry = {"name": "loclic-mse-0.013", "uri": uri, "decision": None, "store": store, "champion": True}
    (tmp_path / "out/registered.json").write_text(json.dumps({"l0130": entry}))
    out = _summary(tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"{uri}  (champion; registered by an earlier run)" in out.stdout
    assert f"MLflow UI: {store}" in out.stdout
    assert (
        f"Use it:       MLFLOW_TRACKING_URI={store} lic compress photo.png --model models:/{entry['name']}@champion"
        in out.stdout
    )


def test_summary_never_advertises_a_model_that_failed_the_gate_as_champion(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(_params())
    (tmp_path / "out/report").mkdir(parents=True)
    (tmp_path / "out/report/report.md").write_text("## sample (3 images)\n\n| codec | bpp |\n")
    reason = "not better than jpeg on sample: sample: 9.91 dB PSNR at 0.1200 bpp vs jpeg 24.30 dB at that rate"
    store = "sqlite:////project/mlflow.db"
    record = {
        key: {
            "name": f"loclic-mse-{lmbda}",
            "uri": f"models:/loclic-mse-{lmbda}/1",
            "store": store,
            "decision": {"promoted": False, "reason": reason},
            "champion": False,
        }
        for key, lmbda in (("l0018", "0.0018"), ("l0130", "0.013"))
    }
    (tmp_path / "out/registered.json").write_text(json.dumps(record))
    out = _summary(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "@champion" not in out.stdout and "No champion" in out.stdout
    assert f"models:/loclic-mse-0.013/1  (candidate, not promoted: {reason})" in out.stdout
    assert (
        f"MLFLOW_TRACKING_URI={store} lic compress photo.png --model models:/loclic-mse-0.0018@candidate" in out.stdout
    )


def test_summary_before_the_pipeline_ran_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(_params())
    out = _summary(tmp_path)
    assert out.returncode == 1
    assert "run `make pipeline`" in out.stderr and "Traceback" not in out.stderr
