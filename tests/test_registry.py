"""The model registry against a real `mlflow server` whose artifacts live in S3 (moto), and a local SQLite store.

One server pair per module. Three tiny checkpoints of known relative quality (the same encoder; the decoder of
one draws mid-grey, of the others near-black) are evaluated for real and registered in turn, so the promotion
gate sees real measurements: the first becomes champion, the better one replaces it, a worse one is refused.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from lic import codec
from lic.checkpoint import load_checkpoint
from lic.cli import app
from lic.errors import LicError
from lic.eval.evaluate import evaluate_checkpoint
from lic.io.checksums import file_digest
from lic.registry import fetch_checkpoint, pull, register_checkpoint
from tests.eval_support import eval_images, eval_manifest, tiny_checkpoint
from tests.servers import free_port, mlflow_model_server, mlflow_server, moto_server

pytestmark = pytest.mark.integration

NAME = "loclic-mse-0.013"
BUCKET = "mlflow"
# Decoders that draw a constant grey level: 0.45 is close to the photos' mean, 0.0 and 0.02 far from it.
VARIANTS = {"first": 0.0, "better": 0.45, "worse": 0.02}


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


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
        steps[variant] = register_checkpoint(checkpoint, eval_dir, "registry-test")
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
    again = register_checkpoint(*evaluated["better"], "registry-test")
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


def test_pyfunc_from_the_registry_round_trips_an_image(servers, registered, evaluated, manifest) -> None:
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


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_a_reconstruction(servers, registered, evaluated, manifest, tmp_path):
    _, server = servers
    image = eval_images(manifest.parent)[1]
    with mlflow_model_server(tmp_path, f"models:/{NAME}@champion", server.env()) as url:
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(_png(image)).decode()]]}}
        answer = requests.post(f"{url}/invocations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    reconstruction = Image.open(io.BytesIO(base64.b64decode(prediction["reconstruction"])))
    original, _ = load_checkpoint(evaluated["better"][0])
    expected = codec.encode(image, original)
    assert base64.b64decode(prediction["bitstream"]) == expected
    assert np.array_equal(np.asarray(reconstruction), np.asarray(codec.decode(expected, original)))


def test_local_sqlite_store(evaluated, tmp_path, monkeypatch) -> None:
    """The default store: no server, SQLite in the working directory, artifacts beside it."""
    monkeypatch.chdir(tmp_path)
    with tracking("sqlite:///mlflow.db"):
        registration = register_checkpoint(*evaluated["first"], "local")
        folder = pull(f"models:/{NAME}@champion")
    assert registration.uri == f"models:/{NAME}/1" and registration.decision.promoted
    assert folder.name == f"{NAME}-v1" and (folder / "model.pt").is_file()
