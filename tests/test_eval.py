"""Evaluation on real bitstreams: `lic evaluate` outputs, bpp from file bytes, PSNR against numpy, anchors, BD."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lic import codec
from lic.checkpoint import load_checkpoint
from lic.cli import app
from lic.errors import LicError
from lic.eval.anchors import measure_anchors, pillow_codec, run_anchors
from lic.eval.bd import bd_metrics, frontier
from lic.eval.evalset import load_eval_set
from lic.eval.evaluate import evaluate_checkpoint
from lic.eval.metrics import ms_ssim, psnr
from lic.eval.reference import reference_points
from lic.params import Anchor, parse_params
from tests.data_support import ROOT, dvc_project, photo, project_params, run, write_params
from tests.eval_support import EVAL_CROPS, eval_images, eval_manifest, tiny_checkpoint


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return eval_manifest(tmp_path_factory.mktemp("eval-images"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "l0130" / "model.pt", key="l0130")


@pytest.fixture(scope="module")
def evaluated(manifest, checkpoint, tmp_path_factory):
    """`lic evaluate` run once through the CLI; its output folder."""
    out = tmp_path_factory.mktemp("eval") / "l0130"
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), "--manifest", str(manifest), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "sample: 2 images" in result.output
    return out


def test_evaluate_writes_json_csv_and_plot(evaluated, checkpoint) -> None:
    results = json.loads((evaluated / "results.json").read_text())
    table = pd.read_csv(evaluated / "images.csv")
    assert len(table) == len(EVAL_CROPS) and set(table["dataset"]) == {"sample"}
    assert results["codec"] == "loclic-mse" and results["metadata"]["lmbda"] == 0.013
    assert results["complexity"]["kmac_per_pixel"] > 0
    assert results["datasets"]["sample"]["images"] == 2
    assert results["datasets"]["sample"]["bpp"] == pytest.approx(table["bpp"].mean())
    assert results["datasets"]["sample"]["psnr"] == pytest.approx(table["psnr"].mean())
    assert (table[["encode_s", "decode_s"]] > 0).all().all()
    with Image.open(evaluated / "rd.png") as figure:
        assert figure.format == "PNG" and figure.width > 400


def test_bpp_is_file_bytes_and_psnr_matches_numpy(evaluated, checkpoint, manifest) -> None:
    """Code each image again, independently of lic.eval, and compare with the table."""
    model, _ = load_checkpoint(checkpoint)
    table = pd.read_csv(evaluated / "images.csv").set_index("image")
    for name, image in zip(EVAL_CROPS, eval_images(manifest.parent), strict=True):
        row = table.loc[str(manifest.parent / name)]
        data = codec.encode(image, model)
        assert row["bytes"] == len(data)
        assert row["bpp"] == pytest.approx(len(data) * 8 / (image.width * image.height), rel=1e-12)  # CSV round trip
        original = np.asarray(image, dtype=np.float64)
        decoded = np.asarray(codec.decode(data, model).convert("RGB"), dtype=np.float64)
        expected = 10 * np.log10(255.0**2 / np.mean((original - decoded) ** 2))
        assert abs(row["psnr"] - expected) < 0.01


def test_quality_metrics_on_known_images() -> None:
    image = np.asarray(photo("astronaut.png").crop((0, 0, 192, 192)))
    off_by_one = np.where(image < 255, image + 1, image - 1).astype(np.uint8)
    assert psnr(image, off_by_one) == pytest.approx(10 * math.log10(255**2), abs=1e-9)
    assert psnr(image, image) == math.inf
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(image, off_by_one) < 1.0
    with pytest.raises(ValueError, match="161"):
        ms_ssim(image[:160], image[:160])


def test_anchors_are_real_files_and_cover_rates(manifest) -> None:
    images = load_eval_set(manifest)
    rows = measure_anchors(images, dict.fromkeys(("jpeg", "webp"), Anchor(qualities=[10, 90], options={})))
    table = pd.DataFrame([row.__dict__ for row in rows])
    assert len(table) == 2 * 2 * len(images)
    encode, _ = pillow_codec("jpeg", 10, {})
    first = images.images[0]
    assert table.iloc[0]["bytes"] == len(encode(first.pixels()))
    means = table.groupby(["codec", "setting"])[["bpp", "psnr"]].mean()
    for name in ("jpeg", "webp"):
        assert means.loc[(name, "q090"), "bpp"] > means.loc[(name, "q010"), "bpp"]
        assert means.loc[(name, "q090"), "psnr"] > means.loc[(name, "q010"), "psnr"] + 5


def test_bd_rate_of_a_curve_needing_three_quarters_of_the_bits() -> None:
    anchor = pd.DataFrame({"bpp": [0.2, 0.4, 0.8, 1.6], "psnr": [28, 31, 34, 37], "ms_ssim": [0.9, 0.95, 0.97, 0.98]})
    test = anchor.assign(bpp=anchor["bpp"] * 0.75)
    result = bd_metrics(anchor, test)
    assert result["bd_rate"] == pytest.approx(-25.0, abs=1e-6)
    assert result["bd_rate_ms_ssim"] == pytest.approx(-25.0, abs=1e-6)
    assert result["bd_psnr"] > 0 and result["notes"] == []
    apart = bd_metrics(anchor, pd.DataFrame({"bpp": [3.0, 4.0], "psnr": [45.0, 46.0], "ms_ssim": [0.999, 0.9995]}))
    assert apart["bd_rate"] is None and "do not overlap" in apart["notes"][0]


def test_frontier_drops_dominated_points() -> None:
    points = pd.DataFrame({"bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [30, 29, 32, 31.5]})
    assert frontier(points, "psnr")["bpp"].tolist() == [0.1, 0.3]


def test_published_curves_only_for_their_dataset() -> None:
    names = {"kodak": "kodak", "clic": "clic_pro_valid_2020"}
    kodak = reference_points("kodak", names)
    assert set(kodak) == {"LoC-LIC", "MLIC++"} and len(kodak["MLIC++"]) == 6
    assert reference_points("sample", names) == {}


@pytest.fixture(scope="module")
def second(manifest, tmp_path_factory):
    """Another lambda's evaluation (another random model), for a two-point curve."""
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "l0018" / "model.pt", seed=1, lmbda=0.0018)
    out = tmp_path_factory.mktemp("eval") / "l0018"
    evaluate_checkpoint(checkpoint, manifest, out, setting="l0018", complexity_size=64)
    return out


@pytest.fixture(scope="module")
def anchors(manifest, tmp_path_factory):
    params = project_params()
    params["data"]["paths"]["eval"] = str(manifest)
    qualities = {"qualities": [20, 80], "options": {}}
    params["evaluate"].update(out_dir=str(tmp_path_factory.mktemp("eval")), anchors=dict.fromkeys(ANCHORS, qualities))
    return run_anchors(parse_params(params))


@pytest.fixture(scope="module")
def peer(manifest, tmp_path_factory):
    """A checkpoint of another architecture (an MLIC++, as `lic import` writes one) evaluated by `lic evaluate`."""
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "mlicpp.pt", seed=2, name="mlicpp", lmbda=0.0035)
    out = tmp_path_factory.mktemp("eval") / "mlicpp-mse-0.0035"
    evaluate_checkpoint(checkpoint, manifest, out, complexity_size=64)
    return out


ANCHORS = ("jpeg", "webp", "avif")


def test_dvc_runs_the_report_stage_and_shows_metrics_and_plots(evaluated, second, peer, anchors, tmp_path) -> None:
    """The report stage of dvc.yaml, run by `dvc repro` in a temporary repository on real evaluations, with an
    MLIC++ checkpoint as a peer."""
    project = dvc_project(tmp_path / "project")
    shutil.copytree(ROOT / "lic", project / "lic", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    params = project_params()
    params["lambdas"] = {"l0018": {"lmbda": 0.0018, "metric": "mse"}, "l0130": {"lmbda": 0.013, "metric": "mse"}}
    params["report"]["peers"] = [peer.name]
    write_params(project, params)
    out = project / params["evaluate"]["out_dir"]
    for source in (evaluated, second, peer, anchors.parent):
        shutil.copytree(source, out / source.name)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "evaluated"], project)

    run([sys.executable, "-m", "dvc", "repro", "--single-item", "report"], project)
    metrics = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project).stdout)
    report = {path: entry["data"] for path, entry in metrics[""]["data"].items() if path.startswith("outputs/report/")}
    points = {path for path in report if path.startswith("outputs/report/metrics/sample/loclic-mse-")}
    assert points == {f"outputs/report/metrics/sample/loclic-mse-{key}.json" for key in ("l0018", "l0130")}
    assert "outputs/report/metrics/sample/mlicpp-mse-0.0035.json" in report  # the peer's point, named by its lambda
    assert report["outputs/report/metrics/sample/bd/jpeg.json"]["bd_rate"] is not None
    assert report["outputs/report/metrics/complexity/loclic-mse.json"]["kmac_per_pixel"] > 0
    assert report["outputs/report/metrics/complexity/mlicpp-mse.json"]["kmac_per_pixel"] > 0
    keys = set().union(*(values.keys() for values in report.values()))  # few columns: the table stays readable
    assert keys == {"bpp", "psnr", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s", "bd_rate", "bd_psnr",
                    "bd_rate_ms_ssim", "kmac_per_pixel", "parameters"}  # fmt: skip
    plots = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], project).stdout)["data"]
    curve = plots["outputs/report/curves/sample.csv"][0]["content"]
    assert {row["codec"] for row in curve["data"]["values"]} == {"loclic-mse", "mlicpp-mse", *ANCHORS}  # a colour each
    assert curve["hconcat"][1]["encoding"]["y"]["field"] == "ms_ssim_db"
    assert any(key.endswith("rd_sample.png") for key in plots)

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "report"], project)
    params["report"]["anchor"] = "jpeg"
    write_params(project, params)
    run([sys.executable, "-m", "dvc", "repro", "--single-item", "report"], project)
    diff = json.loads(run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], project).stdout)
    assert diff["outputs/report/metrics/sample/bd/avif.json"]["bd_rate"]["old"] is None  # new: against jpeg now
    assert diff["outputs/report/metrics/sample/bd/jpeg.json"]["bd_rate"]["new"] is None  # the anchor itself


def test_evaluate_names_a_missing_checkpoint(manifest, tmp_path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "none.pt"), "--manifest", str(manifest), "-o", "x"])
    assert isinstance(result.exception, LicError) and "checkpoint not found" in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_a_peer_without_an_evaluation_is_named_with_the_command_that_makes_one(tmp_path) -> None:
    from lic.eval.report import build_report

    params = project_params()
    params["evaluate"]["out_dir"] = str(tmp_path)
    params["lambdas"] = {}
    params["report"]["peers"] = ["mlicpp-mse-0.0035"]
    with pytest.raises(LicError, match=r"report.peers: .*mlicpp-mse-0.0035 has no evaluation; run lic evaluate"):
        build_report(parse_params(params))
