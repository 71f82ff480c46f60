"""`lic register` and the register stage: a checkpoint and its evaluation become a version of a registered model.

A version holds, as one MLflow model (pyfunc flavour, see pyfunc.py): the raw lic checkpoint, the evaluation it
was measured by (results.json, the per-image images.csv, the rd.png figure) and the `lic` code that serves it.
The numbers that people search for (bpp, PSNR, MS-SSIM per dataset, kMAC/pixel) are logged as metrics of the
MLflow model and copied into the version's tags with lambda, metric, the data version, the checkpoint's SHA-256
and the evaluation set's fingerprints, which the promotion gate compares. The new version gets the `candidate`
alias; the gate then decides about `champion`. Registering the same checkpoint again returns the existing
version, so re-running the stage does not pile up copies.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from lic.checkpoint import CHECKPOINT_FILE, read_checkpoint
from lic.errors import LicError
from lic.eval.evaluate import FIGURE, IMAGES, RESULTS, read_results
from lic.io.atomic import write_text
from lic.io.checksums import file_digest
from lic.io.progress import say
from lic.params import Params
from lic.registry.naming import registered_name
from lic.registry.promotion import CANDIDATE, EVAL_SET_TAG, Decision, promote
from lic.registry.pyfunc import CHECKPOINT_ARTIFACT, SIGNATURE, CodecModel, inference_code, pip_requirements
from lic.registry.tracking import client, registry_errors, tracking_uri

MODEL_NAME = "codec"  # the MLflow model's name inside its run
TRAINING_METADATA = ("key", "step", "run_name", "mlflow_run_id")  # what the training loop records, as tags


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    uri: str  # models:/<name>/<version>
    new: bool  # False when this checkpoint was registered before
    decision: Decision | None  # the promotion gate's, when it ran


def register_checkpoint(
    checkpoint: Path | str,
    eval_dir: Path | str,
    experiment: str,
    *,
    tolerance: float = 0.0,
    gate: bool = True,
    extra_artifacts: Sequence[Path] = (),
) -> Registration:
    """Register `checkpoint` with the evaluation in `eval_dir`; alias it `candidate`; run the promotion gate."""
    checkpoint, eval_dir = Path(checkpoint), Path(eval_dir)
    payload = read_checkpoint(checkpoint)
    metadata = payload["metadata"]
    missing = [key for key in ("lmbda", "metric") if key not in metadata]
    if missing:
        raise LicError(f"{checkpoint}: metadata lacks {missing}; registered models are named by rate point")
    results = _read_evaluation(eval_dir)
    sha256 = file_digest(checkpoint, "sha256")
    if results["checkpoint_sha256"] != sha256:
        raise LicError(f"{eval_dir / RESULTS} evaluates another checkpoint than {checkpoint}: re-run evaluation")
    name = registered_name(payload["model"], metadata["metric"], metadata["lmbda"])
    registry = client()
    with registry_errors(f"registering {name}"):
        existing = registry.search_model_versions(f"name = '{name}' and tag.checkpoint_sha256 = '{sha256}'")
        if existing:
            return Registration(name, str(existing[0].version), f"models:/{name}/{existing[0].version}", False, None)
        version = _log_version(name, checkpoint, eval_dir, payload, results, experiment, extra_artifacts)
        for key, value in _tags(payload, results, sha256).items():
            registry.set_model_version_tag(name, version, key, value)
        registry.set_registered_model_alias(name, CANDIDATE, version)
        decision = promote(registry, name, version, tolerance) if gate else None
    return Registration(name, version, f"models:/{name}/{version}", True, decision)


def _read_evaluation(eval_dir: Path) -> dict[str, Any]:
    for file in (RESULTS, IMAGES, FIGURE):
        if not (eval_dir / file).is_file():
            raise LicError(f"{eval_dir / file} not found: run `lic evaluate` on the checkpoint first")
    results, _ = read_results(eval_dir)
    return results


def _log_version(
    name: str,
    checkpoint: Path,
    eval_dir: Path,
    payload: dict[str, Any],
    results: dict[str, Any],
    experiment: str,
    extra_artifacts: Sequence[Path],
) -> str:
    metadata = payload["metadata"]
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=name), tempfile.TemporaryDirectory(prefix="lic-code-") as code:
        mlflow.log_params({"model": payload["model"], "lmbda": metadata["lmbda"], "metric": metadata["metric"]})
        mlflow.log_params({f"config.{key}": value for key, value in payload["config"].items()})
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=CodecModel(),
            artifacts={
                CHECKPOINT_ARTIFACT: str(checkpoint),
                "evaluation": str(eval_dir / RESULTS),
                "images": str(eval_dir / IMAGES),
                "rd_plot": str(eval_dir / FIGURE),
            },
            code_paths=[str(inference_code(Path(code)))],
            signature=SIGNATURE,
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
        mlflow.log_metrics(_numbers(results), model_id=info.model_id)
        for path in extra_artifacts:
            mlflow.log_artifact(str(path), "report")
    return str(info.registered_model_version)


def _numbers(results: dict[str, Any]) -> dict[str, float]:
    """<dataset>_<metric> means and the complexity: searchable as metrics of the MLflow model."""
    numbers = {
        f"{dataset}_{key}": value for dataset, means in results["datasets"].items() for key, value in means.items()
    }
    numbers["kmac_per_pixel"] = results["complexity"]["kmac_per_pixel"]
    numbers["parameters"] = results["complexity"]["parameters"]
    return {key: float(value) for key, value in numbers.items()}


def _tags(payload: dict[str, Any], results: dict[str, Any], sha256: str) -> dict[str, str]:
    metadata = payload["metadata"]
    tags = {
        "model": payload["model"],
        "lmbda": format(float(metadata["lmbda"]), "g"),
        "metric": metadata["metric"],
        "checkpoint_sha256": sha256,
        "data_version": str(metadata.get("data_version", "unknown")),
        **{f"training.{key}": str(metadata[key]) for key in TRAINING_METADATA if key in metadata},
        **{EVAL_SET_TAG + dataset: fingerprint for dataset, fingerprint in results["eval_sets"].items()},
        **{key: f"{value:.10g}" for key, value in _numbers(results).items()},
    }
    return tags


def register_lambdas(params: Params) -> dict[str, dict[str, Any]]:
    """The register stage: every lambda of params, with its evaluation and the report's figures; writes the
    outcome (name, version, promotion decision) to registry.record."""
    settings = params.registry
    report_dir = Path(params.report.out_dir)
    extra = [report_dir / "report.md", *sorted((report_dir / "figures").glob("*.png"))]
    outcome = {}
    for key in params.lambdas:
        registration = register_checkpoint(
            Path(params.train.outputs) / key / CHECKPOINT_FILE,
            Path(params.evaluate.out_dir) / key,
            settings.experiment,
            tolerance=settings.promotion_tolerance,
            extra_artifacts=[path for path in extra if path.is_file()],
        )
        outcome[key] = {**asdict(registration), "store": tracking_uri()}
        say(_summary(registration))
    write_text(Path(settings.record), json.dumps(outcome, indent=2) + "\n")
    return outcome


def _summary(registration: Registration) -> str:
    line = f"{registration.uri} ({'new, alias candidate' if registration.new else 'already registered'})"
    if registration.decision is not None:
        verdict = "champion" if registration.decision.promoted else "not promoted"
        line += f"; {verdict}: {registration.decision.reason}"
    return line
