"""The model registry against a real `mlflow server` whose artifacts live in S3 (moto), and local SQLite stores.

One server pair per module. Three tiny checkpoints of known relative quality (the same encoder; the decoder of
one draws mid-grey, of the others near-black) are evaluated for real and registered in turn, so the promotion
gate sees real measurements: the first becomes champion, the better one replaces it, a worse one is refused (the
quality floor off). With the floor on, JPEG measured on the same images refuses all of them, as it refuses the
sample pipeline's 16-step models. Models are logged as code (no pickle); `lic` runs as a user would run it, from
folders inside and outside a project; `mlflow models serve` codes both ways.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
import yaml
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from PIL import Image
from typer.testing import CliRunner

from lic import codec
from lic.checkpoint import load_checkpoint
from lic.cli import app
from lic.errors import LicError
from lic.eval.anchors import measure_anchors
from lic.eval.evalset import load_eval_set
from lic.eval.evaluate import evaluate_checkpoint
from lic.eval.measure import to_frame
from lic.io.checksums import file_digest
from lic.params import Anchor, load_params, parse_params
from lic.registry import fetch_checkpoint, pull, register_checkpoint
from lic.registry.promotion import QualityFloor
from lic.registry.register import register_lambdas
from lic.stack.services import BIN
from lic.summary import summary
from lic.train.settings import resolve
from lic.train.tracking import open_run
from tests.eval_support import eval_images, eval_manifest, tiny_checkpoint
from tests.servers import free_port, mlflow_model_server, mlflow_server, moto_server

pytestmark = pytest.mark.integration

NAME = "loclic-mse-0.013"
BUCKET = "mlflow"
# Decoders that draw a constant grey level: 0.45 is close to the photos' mean, 0.0 and 0.02 far from it.
VARIANTS = {"first": 0.0, "better": 0.45, "worse": 0.02}


@contextmanager
def tracking(uri: str | None) -> Iterator[None]:
    """Make `uri` MLflow's store for a while (None: no store named, so lic uses the project's), then leave the
    process as it was (MLflow's own helper: restoring by set_tracking_uri(previous) would leave a URI "set" for
    every later test)."""
    with _use_tracking_uri(uri):
        yield


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("registry-servers")
    with (
        moto_server(workdir, buckets=(BUCKET,)) as s3,
        mlflow_server(workdir / "mlflow", s3, BUCKET) as server,
        tracking(server.uri),
    ):
        yield s3, server


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return eval_manifest(tmp_path_factory.mktemp("registry-images"))


@pytest.fixture(scope="module")
def evaluated(manifest, tmp_path_factory):
    """{variant: (checkpoint, evaluation folder)}, each evaluated on the same two images."""
    root = tmp_path_factory.mktemp("registry-models")
    out = {}
    for variant, grey in VARIANTS.items():
        checkpoint = tiny_checkpoint(root / variant / "model.pt", constant_output=grey)
        evaluate_checkpoint(checkpoint, manifest, root / variant / "eval", setting=variant, complexity_size=64)
        out[variant] = (checkpoint, root / variant / "eval")
    return out


@pytest.fixture(scope="module")
def registered(servers, evaluated):
    """Register the three variants in order; the registrations and the champion's decision at each step."""
    steps = {}
    for variant in VARIANTS:
        checkpoint, eval_dir = evaluated[variant]
        steps[variant] = register_checkpoint(checkpoint, eval_dir, "registry-test", quality_floor=None)
    return steps


def test_versions_aliases_and_the_promotion_gate(servers, registered) -> None:
    client = mlflow.MlflowClient()
    assert [registered[v].version for v in VARIANTS] == ["1", "2", "3"]
    assert registered["first"].decision.promoted and "no champion" in registered["first"].decision.reason
    assert registered["better"].decision.promoted
    refusal = registered["worse"].decision
    assert not refusal.promoted and "worse than the champion" in refusal.reason
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    assert client.get_model_version_by_alias(NAME, "candidate").version == "3"
    refused = client.get_model_version(NAME, "3")
    assert refused.tags["promotion"] == "refused" and "J " in refused.tags["promotion_reason"]
    assert refused.description.startswith("Not promoted")
    champion = client.get_model_version(NAME, "2")
    assert float(champion.tags["sample_psnr"]) > float(refused.tags["sample_psnr"])
    assert champion.tags["sample_bpp"] == refused.tags["sample_bpp"]  # same encoder: J differs by distortion only
    assert float(champion.tags["kmac_per_pixel"]) > 0 and champion.tags["data_version"] == "unknown"


def test_artifacts_live_in_s3_and_metrics_are_searchable(servers, registered) -> None:
    s3, _ = servers
    keys = s3.keys(BUCKET)
    for name in ("model.pt", "results.json", "images.csv", "rd.png", "MLmodel", "requirements.txt"):
        assert any(key.endswith(f"/{name}") for key in keys), name
    found = mlflow.search_logged_models(filter_string="metrics.sample_bpp > 0", output_format="list")
    assert len(found) >= 3


def test_registering_the_same_checkpoint_again_reuses_its_version(servers, registered, evaluated) -> None:
    again = register_checkpoint(*evaluated["better"], "registry-test", quality_floor=None)
    assert (again.version, again.new, again.decision) == ("2", False, None)


def test_pull_gives_a_checkpoint_that_codes_the_same_bytes(servers, registered, evaluated, manifest, tmp_path) -> None:
    result = CliRunner().invoke(app, ["pull", f"models:/{NAME}@champion", "-o", str(tmp_path / "pulled")])
    assert result.exit_code == 0, result.output
    pulled = tmp_path / "pulled"
    assert (pulled / "MLmodel").is_file() and (pulled / "artifacts" / "results.json").is_file()
    assert file_digest(pulled / "model.pt", "sha256") == file_digest(evaluated["better"][0], "sha256")
    original, _ = load_checkpoint(evaluated["better"][0])
    copy, _ = load_checkpoint(pulled / "model.pt")
    image = eval_images(manifest.parent)[1]
    assert codec.encode(image, copy) == codec.encode(image, original)


def test_fetch_checkpoint_caches_and_names_bad_references(servers, registered, evaluated, monkeypatch, tmp_path):
    monkeypatch.setenv("LIC_CACHE_DIR", str(tmp_path / "cache"))
    path = fetch_checkpoint(f"models:/{NAME}/1")
    assert path.is_relative_to(tmp_path / "cache")
    assert file_digest(path, "sha256") == file_digest(evaluated["first"][0], "sha256")
    assert fetch_checkpoint(f"models:/{NAME}/1") == path
    with pytest.raises(LicError, match="not found"):
        fetch_checkpoint("models:/no-such-model@champion")
    with pytest.raises(LicError, match="not found"):
        fetch_checkpoint(f"models:/{NAME}@no-such-alias")
    with pytest.raises(LicError, match="expected models:/"):
        fetch_checkpoint("s3://bucket/model.pt")


def test_unreachable_server_is_a_clear_error() -> None:
    with tracking(f"http://127.0.0.1:{free_port()}"), pytest.raises(LicError, match="unreachable"):
        fetch_checkpoint(f"models:/{NAME}@champion")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_pyfunc_from_the_registry_codes_both_ways(servers, registered, evaluated, manifest) -> None:
    image = eval_images(manifest.parent)[0]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(pd.DataFrame({"image": [_png(image)]}))
    original, _ = load_checkpoint(evaluated["better"][0])
    expected = codec.encode(image, original)
    assert out.loc[0, "bitstream"] == expected
    assert out.loc[0, "bpp"] == len(expected) * 8 / (image.width * image.height)
    assert (out.loc[0, "height"], out.loc[0, "width"]) == (image.height, image.width)
    reconstruction = Image.open(io.BytesIO(out.loc[0, "reconstruction"]))
    assert np.array_equal(np.asarray(reconstruction), np.asarray(codec.decode(expected, original)))
    back = model.predict(pd.DataFrame({"bitstream": [expected]}))
    decoded = Image.open(io.BytesIO(back.loc[0, "reconstruction"]))
    assert np.array_equal(np.asarray(decoded), np.asarray(reconstruction)) and back.loc[0, "bitstream"] is None
    for bad, message in (
        ({"image": [b"not an image"]}, "row 0: `image` is not an image"),
        ({"bitstream": [expected[:-5]]}, "row 0: "),
        ({"image": [_png(image)], "bitstream": [expected]}, "exactly one of"),
    ):
        with pytest.raises(mlflow.exceptions.MlflowException, match=message):
            model.predict(pd.DataFrame(bad))


def _split(**columns: bytes) -> dict:
    return {
        "dataframe_split": {
            "columns": list(columns),
            "data": [[base64.b64encode(v).decode() for v in columns.values()]],
        }
    }


@pytest.mark.slow
def test_mlflow_models_serve_codes_both_ways_and_refuses_bad_input(servers, registered, evaluated, manifest, tmp_path):
    _, server = servers
    image = eval_images(manifest.parent)[1]
    with mlflow_model_server(tmp_path, f"models:/{NAME}@champion", server.env()) as url:
        answer = requests.post(f"{url}/invocations", json=_split(image=_png(image)), timeout=120)
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        bitstream = base64.b64decode(prediction["bitstream"])
        decoded = requests.post(f"{url}/invocations", json=_split(bitstream=bitstream), timeout=120)
        refusals = [
            requests.post(f"{url}/invocations", json=body, timeout=120)
            for body in (_split(image=b"not an image"), _split(bitstream=bitstream[:-5]), _split(bitstream=b"LIC"))
        ]
    reconstruction = Image.open(io.BytesIO(base64.b64decode(prediction["reconstruction"])))
    original, _ = load_checkpoint(evaluated["better"][0])
    expected = codec.encode(image, original)
    assert bitstream == expected
    assert np.array_equal(np.asarray(reconstruction), np.asarray(codec.decode(expected, original)))
    assert decoded.status_code == 200, decoded.text
    image_back = Image.open(io.BytesIO(base64.b64decode(decoded.json()["predictions"][0]["reconstruction"])))
    assert np.array_equal(np.asarray(image_back), np.asarray(reconstruction))
    for refusal in refusals:
        assert refusal.status_code == 400, refusal.text
        body = refusal.json()
        assert "row 0: " in body["message"] and "Traceback" not in refusal.text and "stack_trace" not in body


def test_local_sqlite_store(evaluated, tmp_path, monkeypatch) -> None:
    """The default store: no server, SQLite in the working directory, artifacts beside it."""
    monkeypatch.chdir(tmp_path)
    with tracking("sqlite:///mlflow.db"):
        registration = register_checkpoint(*evaluated["first"], "local", quality_floor=None)
        folder = pull(f"models:/{NAME}@champion")
    assert registration.uri == f"models:/{NAME}/1" and registration.decision.promoted
    assert folder.name == f"{NAME}-v1" and (folder / "model.pt").is_file()


class PlantedPayload:
    """A pickle that, when loaded, creates a file: what an attacker with write access to a version could plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _is_pickle(data: bytes) -> bool:
    return len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5  # the PROTO opcode of pickle protocols 2-5


def test_no_artifact_of_a_registered_model_is_a_pickle(servers, registered, tmp_path) -> None:
    """Issue 17.1. Failed before the fix: the version held python_model.pkl (cloudpickle of CodecModel)."""
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path)))
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files
    for path in files:
        assert path.suffix not in (".pkl", ".pickle"), path
        assert not _is_pickle(path.read_bytes()[:2]), path
        if zipfile.is_zipfile(path):  # torch's format: its data.pkl must load under weights_only
            torch.load(path, map_location="cpu", weights_only=True)
    flavour = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in flavour and "python_model" not in flavour


def test_a_planted_pickle_runs_nothing_when_the_model_loads(servers, registered, manifest, tmp_path) -> None:
    """Issue 17.1. Before the fix, load_model unpickled python_model.pkl, so replacing it ran the attacker's code
    (this test failed: the marker file appeared). Now the model is code plus weights_only weights; a pickle put in
    the folder is never read, and MLflow's own switch against pickles can stay off."""
    folder = pull(f"models:/{NAME}@champion", tmp_path / "pulled")
    marker = tmp_path / "payload-ran"
    (folder / "python_model.pkl").write_bytes(pickle.dumps(PlantedPayload(marker)))
    previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    try:
        model = mlflow.pyfunc.load_model(str(folder))
    finally:
        if previous is None:
            del os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"]
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = previous
    assert not marker.exists()
    image = eval_images(manifest.parent)[0]
    assert model.predict(pd.DataFrame({"image": [_png(image)]})).loc[0, "bpp"] > 0


# The quality floor: JPEG measured for real on the evaluation images, as the anchors stage does.
JPEG = {"jpeg": Anchor(qualities=[5, 20, 50, 80, 95], options={"optimize": True})}


@pytest.fixture(scope="module")
def jpeg_table(manifest, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("anchors") / "images.csv"
    to_frame(measure_anchors(load_eval_set(manifest), JPEG)).to_csv(path, index=False)
    return path


def test_quality_floor_compares_with_jpeg_at_the_same_rate(jpeg_table) -> None:
    """Candidates made of JPEG's own measured points, moved in rate: fewer bits at the same quality beats JPEG,
    more bits does not; beyond JPEG's rates nothing can be shown; other images are not comparable."""
    floor = QualityFloor.measured("jpeg", jpeg_table)
    q50 = floor.table[floor.table["setting"] == "q050"].assign(codec="loclic-mse")
    cheaper, dearer = q50.assign(bpp=q50["bpp"] * 0.9), q50.assign(bpp=q50["bpp"] * 1.1)
    assert floor.check(cheaper, "mse").promoted and floor.check(cheaper, "ms-ssim").promoted
    refused = floor.check(dearer, "mse")
    assert not refused.promoted and refused.reason.startswith("not better than jpeg on sample: sample: ")
    beyond = q50.assign(bpp=q50["bpp"] * 100, psnr=q50["psnr"] + 10)
    assert "beyond jpeg's measured rates" in floor.check(beyond, "mse").reason
    assert "it does not reach" in floor.check(beyond.assign(psnr=q50["psnr"]), "mse").reason
    below = q50.assign(bpp=q50["bpp"] / 100)
    assert floor.check(below, "mse").promoted  # fewer bits than JPEG's lowest point, more quality than it
    assert not floor.check(q50.assign(image="other.png"), "mse").promoted
    missing = QualityFloor.measured("jpeg", jpeg_table.parent / "none.csv").check(q50, "mse")
    assert not missing.promoted and "dvc repro anchors" in missing.reason


def test_register_stage_promotes_none_worse_than_jpeg(evaluated, jpeg_table, project_root, tmp_path, monkeypatch):
    """The register stage on real evaluation outputs (two versions of one rate point, ~9 and ~13 dB) and JPEG's
    real measurement: both become candidates, neither champion (the one champion from before the floor loses the
    alias), and the summary says so."""
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["lambdas"] = {"first": {"lmbda": 0.013, "metric": "mse"}, "better": {"lmbda": 0.013, "metric": "mse"}}
    params = parse_params(raw)
    for key in params.lambdas:
        checkpoint, eval_dir = evaluated[key]
        (tmp_path / "outputs/train" / key).mkdir(parents=True)
        shutil.copy(checkpoint, tmp_path / "outputs/train" / key / "model.pt")
        shutil.copytree(eval_dir, tmp_path / "outputs/eval" / key)
    (tmp_path / "outputs/eval/anchors").mkdir()
    shutil.copy(jpeg_table, tmp_path / "outputs/eval/anchors/images.csv")
    (tmp_path / "outputs/report").mkdir()
    (tmp_path / "outputs/report/report.md").write_text("## sample (2 images)\n\n| codec | bpp |\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with tracking(None):  # no store named: the project's
        # a store from before the floor: "first" became champion by being first
        register_checkpoint("outputs/train/first/model.pt", "outputs/eval/first", "local", quality_floor=None)
        outcome = register_lambdas(params)
        text = summary(params)
    store = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert [entry["version"] for entry in outcome.values()] == ["1", "2"]
    for entry in outcome.values():
        assert entry["store"] == store and not entry["champion"] and not entry["decision"]["promoted"]
        assert "not better than jpeg on sample: " in entry["decision"]["reason"]
    assert outcome["first"]["decision"]["reason"].startswith("no longer champion: ")  # the floor took the alias
    client = mlflow.MlflowClient(store)
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "2"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(NAME, "champion")
    assert client.get_model_version(NAME, "1").tags["floor"] == "failed"
    assert "No champion" in text and "@champion" not in text
    assert f"MLFLOW_TRACKING_URI={store} lic compress photo.png --model models:/{NAME}@candidate" in text
    assert "candidate, not promoted: not better than jpeg" in text


def _lic(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env
    return subprocess.run([str(BIN / "lic"), *args], cwd=cwd, env=environment, capture_output=True, text=True)


def test_models_references_work_from_any_folder(servers, registered, manifest, tmp_path) -> None:
    """Issue 18.1: outside the project only MLFLOW_TRACKING_URI names the store; without it the error says so
    and no empty store appears."""
    _, server = servers
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    eval_images(manifest.parent)[0].save(outside / "photo.png")
    lost = _lic(["compress", "photo.png", "--model", f"models:/{NAME}@champion"], outside)
    assert lost.returncode != 0 and "MLFLOW_TRACKING_URI" in lost.stderr and "Traceback" not in lost.stderr
    assert not (outside / "mlflow.db").exists() and not (outside / "photo.lic").exists()
    cache = str(tmp_path / "cache")
    done = _lic(
        ["compress", "photo.png", "--model", f"models:/{NAME}@champion"],
        outside,
        MLFLOW_TRACKING_URI=server.uri,
        LIC_CACHE_DIR=cache,
    )
    assert done.returncode == 0, done.stderr
    assert (outside / "photo.lic").stat().st_size > 0


def test_a_subfolder_of_the_project_uses_the_project_store(evaluated, project_root, tmp_path, monkeypatch) -> None:
    project = tmp_path / "project"
    (project / "photos" / "deep").mkdir(parents=True)
    shutil.copy(project_root / "params.yaml", project / "params.yaml")
    monkeypatch.chdir(project)
    with tracking(None):
        register_checkpoint(*evaluated["first"], "local", quality_floor=None)
    deep, cache = project / "photos" / "deep", str(tmp_path / "cache")
    pulled = _lic(["pull", f"models:/{NAME}@champion", "-o", "model"], deep, LIC_CACHE_DIR=cache)
    assert pulled.returncode == 0, pulled.stderr
    assert (deep / "model" / "model.pt").is_file() and not (deep / "mlflow.db").exists()
    missing = _lic(["pull", "models:/no-such-model@champion"], deep, LIC_CACHE_DIR=cache)
    assert missing.returncode != 0
    assert f"not found (MLflow store searched: sqlite:///{project.resolve()}/mlflow.db)" in missing.stderr
    empty = tmp_path / "empty-project"
    empty.mkdir()
    (empty / "dvc.yaml").write_text("stages: {}\n")
    nothing = _lic(["pull", f"models:/{NAME}@champion"], empty, LIC_CACHE_DIR=cache)
    assert nothing.returncode != 0 and "no MLflow store at" in nothing.stderr
    assert not (empty / "mlflow.db").exists()


def test_lineage_from_the_training_run_to_the_version(servers, manifest, project_root, tmp_path) -> None:
    """Issue 18.3: the training run records code, data and dataset; the version is logged in it, with a model
    card, a description and an input example; experiments open in MLflow's model-training view."""
    project = tmp_path / "project"
    (project / "data/shards").mkdir(parents=True)
    index = pd.DataFrame({"file": ["train-00000.beton"], "split": ["train"], "row": [0], "path": ["a.png"]})
    index.to_parquet(project / "data/shards/index.parquet")
    md5 = "0123456789abcdef0123456789abcdef.dir"
    lock = {"schema": "2.0", "stages": {"shard": {"outs": [{"path": "data/shards", "md5": md5}]}}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=project, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    params = load_params(project_root / "params.yaml", overrides={"shards.dir": "data/shards"})
    run_id = open_run(resolve(params, "l0130", root=project))
    checkpoint = tiny_checkpoint(
        tmp_path / "model.pt", constant_output=0.45, lmbda=0.0067, mlflow_run_id=run_id, data_version=md5
    )
    evaluate_checkpoint(checkpoint, manifest, tmp_path / "eval", complexity_size=64)
    registration = register_checkpoint(checkpoint, tmp_path / "eval", "registry-test", quality_floor=None)
    client = mlflow.MlflowClient()
    version = client.get_model_version(registration.name, registration.version)
    run = client.get_run(run_id)
    assert version.run_id == run_id
    assert run.data.tags["mlflow.source.git.commit"] == commit and run.data.tags["lic.data_version"] == md5
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("shards", md5)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    assert [f"models:/{model.model_id}" for model in logged] == [version.source]
    assert "lambda 0.0067" in client.get_registered_model(registration.name).description
    assert "kMAC/pixel" in version.description and "| sample | 2 |" in version.description
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{registration.name}/{registration.version}", dst_path=str(tmp_path / "v")
        )
    )
    assert "saved_input_example_info" in yaml.safe_load((folder / "MLmodel").read_text())
    assert (folder / "artifacts" / "model_card.md").is_file()
