"""The train stage's steps.csv (DVC plots): the MLflow run's step metrics, one row per step, read back from a real
MLflow store."""

from __future__ import annotations

import time

from mlflow import MlflowClient
from mlflow.entities import Metric

from lic.train.driver import steps_csv
from lic.train.tracking import STEP_CURVES, step_history


def test_steps_csv_has_a_row_per_logged_step_and_the_last_value_of_a_repeated_step(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("curves")).info.run_id
    now = int(time.time() * 1000)
    logged = [(2, {"loss": 3.0, "bpp": 0.9, "psnr": 20.5, "lr": 1e-4}), (4, {"loss": 2.5, "bpp": 0.8, "psnr": 21.0})]
    logged += [(4, {"val_loss": 2.7, "val_psnr": 20.8}), (4, {"loss": 2.4})]  # a restarted attempt logs step 4 again
    for offset, (step, values) in enumerate(logged):
        client.log_batch(run_id, metrics=[Metric(k, v, now + offset, step) for k, v in values.items()])

    rows = step_history(uri, run_id)
    assert [row["step"] for row in rows] == [2, 4]
    assert rows[1] == {"step": 4, "loss": 2.4, "bpp": 0.8, "psnr": 21.0, "val_loss": 2.7, "val_psnr": 20.8}
    lines = steps_csv(rows).splitlines()
    assert lines[0] == ",".join(["step", *STEP_CURVES])
    assert lines[1] == "2,3,0.9,20.5,0.0001,,,,"
    assert lines[2].startswith("4,2.4,0.8,21,,,2.7,,20.8")
