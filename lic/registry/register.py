"""`lic register` and the register stage: a checkpoint and its evaluation become a version of a registered model.

A version holds, as one MLflow model (pyfunc flavour, logged as code, see pyfunc.py): the raw lic checkpoint, the
evaluation it was measured by (results.json, the per-image images.csv, the rd.png figure), its model card and the
`lic` code that serves it. The model is logged in the checkpoint's training run when that run is in the same
store (the checkpoint records its id), so the training run lists the model and the version it became, and the
version links back to the run with its parameters, curves, data set and git commit; a checkpoint trained
elsewhere gets a registration run of its own in `registry.experiment`. The numbers people search for (bpp, PSNR,
MS-SSIM per dataset, kMAC/pixel) are logged as metrics of the MLflow model and copied into the version's tags
with lambda, metric, the data version, the checkpoint's SHA-256 and the evaluation set's fingerprints, which the
promotion gate compares. The new version gets the `candidate` alias; the gate (promotion.py: the quality floor,
then the champion) decides about `champion`. Registering the same checkpoint again returns the existing version,
so re-running the stage does not pile up copies.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from lic.checkpoint import CHECKPOINT_FILE, read_checkpoint
from lic.errors import LicError
from lic.eval.anchors import ANCHORS_DIR
from lic.eval.anchors import IMAGES as ANCHOR_IMAGES
from lic.eval.evaluate import FIGURE, IMAGES, RESULTS, read_results
from lic.io.atomic import write_text
from lic.io.checksums import file_digest
from lic.io.progress import say
from lic.params import Params
from lic.registry.naming import registered_name
from lic.registry.promotion import (
    CANDIDATE,
    EVAL_SET_TAG,
    FLOOR_FAILED,
    FLOOR_OFF,
    FLOOR_PASSED,
    FLOOR_TAG,
    Decision,
    QualityFloor,
    champion_of,
    promote,
    recheck_floor,
)
from lic.registry.pyfunc import log_codec_model
from lic.registry.tracking import EXPERIMENT_KIND, client, is_not_found, registry_errors, tracking_uri

MODEL_NAME = "codec"  # the MLflow model's name inside its run
MODEL_CARD = "model_card.md"
TRAINING_METADATA = ("key", "step", "run_name", "mlflow_run_id")  # what the training loop records, as tags


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    uri: str  # models:/<name>/<version>
    new: bool  # False when this checkpoint was registered before
    decision: Decision | None  # the promotion gate's, when it ran
    champion: bool  # whether the version holds the champion alias after this registration


def register_checkpoint(
    checkpoint: Path | str,
    eval_dir: Path | str,
    experiment: str,
    *,
    quality_floor: QualityFloor | None,
    tolerance: float = 0.0,
    gate: bool = True,
    extra_artifacts: Sequence[Path] = (),
) -> Registration:
    """Register `checkpoint` with the evaluation in `eval_dir`; alias it `candidate`; run the promotion gate.

    `quality_floor`: the classical codec the version must beat to become champion (None: no floor)."""
    checkpoint, eval_dir = Path(checkpoint), Path(eval_dir)
    payload = read_checkpoint(checkpoint)
    metadata = payload["metadata"]
    missing = [key for key in ("lmbda", "metric") if key not in metadata]
    if missing:
        raise LicError(f"{checkpoint}: metadata lacks {missing}; registered models are named by rate point")
    results, images = _read_evaluation(eval_dir)
    sha256 = file_digest(checkpoint, "sha256")
    if results["checkpoint_sha256"] != sha256:
        raise LicError(f"{eval_dir / RESULTS} evaluates another checkpoint than {checkpoint}: re-run evaluation")
    name = registered_name(payload["model"], metadata["metric"], metadata["lmbda"])
    registry = client(create=True)
    with registry_errors(f"registering {name}"):
        existing = registry.search_model_versions(f"name = '{name}' and tag.checkpoint_sha256 = '{sha256}'")
        if existing:
            version, decision = str(existing[0].version), None
            if gate and quality_floor and existing[0].tags.get(FLOOR_TAG) != FLOOR_PASSED:
                decision = recheck_floor(registry, name, version, quality_floor.check(images, metadata["metric"]))
            return Registration(
                name, version, f"models:/{name}/{version}", False, decision, _is_champion(registry, name, version)
            )
        floor = quality_floor.check(images, metadata["metric"]) if quality_floor else None
        tags = _tags(payload, results, sha256, floor)
        card = model_card(name, payload, results, tags)
        version = _log_version(
            registry, name, checkpoint, eval_dir, payload, results, card, experiment, extra_artifacts
        )
        for key, value in tags.items():
            registry.set_model_version_tag(name, version, key, value)
        registry.set_registered_model_alias(name, CANDIDATE, version)
        decision = promote(registry, name, version, tolerance, card) if gate else None
        _describe(registry, name, payload, quality_floor)
    return Registration(
        name, version, f"models:/{name}/{version}", True, decision, _is_champion(registry, name, version)
    )


def _read_evaluation(eval_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    for file in (RESULTS, IMAGES, FIGURE):
        if not (eval_dir / file).is_file():
            raise LicError(f"{eval_dir / file} not found: run `lic evaluate` on the checkpoint first")
    return read_results(eval_dir)


def _is_champion(registry: MlflowClient, name: str, version: str) -> bool:
    champion = champion_of(registry, name)
    return champion is not None and str(champion.version) == version


def _training_run(registry: MlflowClient, metadata: dict[str, Any]) -> Run | None:
    """The checkpoint's training run, if it is in this store."""
    run_id = metadata.get("mlflow_run_id")
    if not run_id:
        return None
    try:
        return registry.get_run(str(run_id))
    except MlflowException as err:
        if is_not_found(err):
            return None
        raise


def _log_version(
    registry: MlflowClient,
    name: str,
    checkpoint: Path,
    eval_dir: Path,
    payload: dict[str, Any],
    results: dict[str, Any],
    card: str,
    experiment: str,
    extra_artifacts: Sequence[Path],
) -> str:
    training_run = _training_run(registry, payload["metadata"])
    if training_run is None:
        _tag_experiment(registry, mlflow.set_experiment(experiment).experiment_id)
    else:  # MLflow resumes a run only inside its own experiment
        mlflow.set_experiment(experiment_id=training_run.info.experiment_id)
    with (
        mlflow.start_run(run_id=training_run and training_run.info.run_id, run_name=None if training_run else name),
        tempfile.TemporaryDirectory(prefix="lic-card-") as scratch,
    ):
        if training_run is None:  # a training run has these already, under the same names
            metadata = payload["metadata"]
            mlflow.log_params({"model": payload["model"], "lmbda": metadata["lmbda"], "metric": metadata["metric"]})
            mlflow.log_params({f"config.{key}": value for key, value in payload["config"].items()})
        card_file = Path(scratch) / MODEL_CARD
        card_file.write_text(card)
        info = log_codec_model(
            MODEL_NAME,
            checkpoint,
            artifacts={
                "evaluation": eval_dir / RESULTS,
                "images": eval_dir / IMAGES,
                "rd_plot": eval_dir / FIGURE,
                "model_card": card_file,
            },
            registered_model_name=name,
        )
        mlflow.log_metrics(_numbers(results), model_id=info.model_id)
        mlflow.log_artifact(str(card_file))
        for path in extra_artifacts:
            mlflow.log_artifact(str(path), "report")
    return str(info.registered_model_version)


def _tag_experiment(registry: MlflowClient, experiment_id: str) -> None:
    for key, value in EXPERIMENT_KIND.items():
        registry.set_experiment_tag(experiment_id, key, value)


def _numbers(results: dict[str, Any]) -> dict[str, float]:
    """<dataset>_<metric> means and the complexity: searchable as metrics of the MLflow model."""
    numbers = {
        f"{dataset}_{key}": value for dataset, means in results["datasets"].items() for key, value in means.items()
    }
    numbers["kmac_per_pixel"] = results["complexity"]["kmac_per_pixel"]
    numbers["parameters"] = results["complexity"]["parameters"]
    return {key: float(value) for key, value in numbers.items()}


def _tags(payload: dict[str, Any], results: dict[str, Any], sha256: str, floor: Decision | None) -> dict[str, str]:
    metadata = payload["metadata"]
    verdict = FLOOR_OFF if floor is None else FLOOR_PASSED if floor.promoted else FLOOR_FAILED
    return {
        "model": payload["model"],
        "lmbda": format(float(metadata["lmbda"]), "g"),
        "metric": metadata["metric"],
        "checkpoint_sha256": sha256,
        "data_version": str(metadata.get("data_version", "unknown")),
        **{f"training.{key}": str(metadata[key]) for key in TRAINING_METADATA if key in metadata},
        **{EVAL_SET_TAG + dataset: fingerprint for dataset, fingerprint in results["eval_sets"].items()},
        **{key: f"{value:.10g}" for key, value in _numbers(results).items()},
        FLOOR_TAG: verdict,
        FLOOR_TAG + "_reason": "no quality floor configured" if floor is None else floor.reason,
    }


def model_card(name: str, payload: dict[str, Any], results: dict[str, Any], tags: dict[str, str]) -> str:
    """What a person needs before pulling the version: what it is, its rate point, data and measured RD."""
    metadata, complexity = payload["metadata"], results["complexity"]
    lines = [
        f"# {name}",
        "",
        f"LoC-LIC learned image codec, architecture `{payload['model']}`, trained for **{metadata['metric']}** at "
        f"lambda **{format(float(metadata['lmbda']), 'g')}** (a higher lambda gives a higher rate).",
        "",
        f"- Complexity: {complexity['kmac_per_pixel']:.1f} kMAC/pixel, {complexity['parameters']:,} parameters",
        f"- Training data: DVC version `{tags['data_version']}` of the shard set; training run "
        f"`{metadata.get('mlflow_run_id', 'unknown')}` ({metadata.get('run_name', 'not trained by lic train')}, "
        f"step {metadata.get('step', 'unknown')})",
        f"- Checkpoint SHA-256: `{tags['checkpoint_sha256']}`",
        f"- Quality floor: {tags[FLOOR_TAG]} ({tags[FLOOR_TAG + '_reason']})",
        "",
        "Rate-distortion on the evaluation images (real bitstreams, means of per-image values):",
        "",
        "| dataset | images | bpp | PSNR (dB) | MS-SSIM |",
        "|---|---|---|---|---|",
    ]
    for dataset, means in sorted(results["datasets"].items()):
        lines.append(
            f"| {dataset} | {means['images']} | {means['bpp']:.4f} | {means['psnr']:.2f} | {means['ms_ssim']:.4f} |"
        )
    lines += ["", f"Use: `lic compress photo.png --model models:/{name}@champion` (docs/registry.md)."]
    return "\n".join(lines) + "\n"


def _describe(registry: MlflowClient, name: str, payload: dict[str, Any], floor: QualityFloor | None) -> None:
    """The registered model's description: what the name stands for and how its champion is chosen."""
    metadata = payload["metadata"]
    gate = f"beats {floor.codec} on the same images and " if floor else ""
    registry.update_registered_model(
        name,
        description=(
            f"LoC-LIC image codec `{payload['model']}` at one rate point: {metadata['metric']}, lambda "
            f"{format(float(metadata['lmbda']), 'g')}. Versions are successive trainings; `@candidate` is the latest, "
            f"`@champion` the one that {gate}is not worse than the previous champion. Each version's description is "
            "its model card."
        ),
    )


def register_lambdas(params: Params) -> dict[str, dict[str, Any]]:
    """The register stage: every lambda of params, with its evaluation and the report's figures; writes the
    outcome (name, version, promotion decision, store) to registry.record."""
    settings = params.registry
    report_dir = Path(params.report.out_dir)
    extra = [report_dir / "report.md", *sorted((report_dir / "figures").glob("*.png"))]
    outcome = {}
    for key in params.lambdas:
        registration = register_checkpoint(
            Path(params.train.outputs) / key / CHECKPOINT_FILE,
            Path(params.evaluate.out_dir) / key,
            settings.experiment,
            quality_floor=floor_of(params),
            tolerance=settings.promotion_tolerance,
            extra_artifacts=[path for path in extra if path.is_file()],
        )
        outcome[key] = {**asdict(registration), "store": tracking_uri()}
        say(_summary(registration))
    write_text(Path(settings.record), json.dumps(outcome, indent=2) + "\n")
    return outcome


def floor_of(params: Params, codec: str | None = None) -> QualityFloor | None:
    """registry.quality_floor (or `codec`), measured by the anchors stage; None when the floor is off."""
    codec = codec or params.registry.quality_floor
    if codec == "none":
        return None
    return QualityFloor.measured(codec, Path(params.evaluate.out_dir) / ANCHORS_DIR / ANCHOR_IMAGES)


def _summary(registration: Registration) -> str:
    line = f"{registration.uri} ({'new, alias candidate' if registration.new else 'already registered'})"
    if registration.decision is not None:
        verdict = "champion" if registration.decision.promoted else "not promoted"
        line += f"; {verdict}: {registration.decision.reason}"
    return line
