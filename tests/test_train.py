"""Training pieces that need no Ray: settings and run names, the schedule, checkpoints, validation, the CLI."""

from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from skimage import data

from lic import codec
from lic.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lic.errors import LicError
from lic.models import build
from lic.params import parse_params
from lic.registry.tracking import tracking_uri
from lic.train.loop import Meter
from lic.train.objective import RateDistortionLoss, make_optimizers
from lic.train.resume import restore_checkpoint, write_checkpoint
from lic.train.schedule import crop_sizes, learning_rate, mix_start_step, scaled_lr, warmup_steps
from lic.train.settings import UNVERSIONED, Optimisation, global_batch, resolve
from lic.train.validation import validate

TINY = {"N": [8, 8, 16], "M": 40, "slices": 2}


@pytest.fixture(scope="module")
def params(project_root) -> dict:
    return yaml.safe_load((project_root / "params.yaml").read_text())


def test_run_name_follows_what_shapes_the_weights_but_not_the_step_budget(params, tmp_path) -> None:
    base = resolve(parse_params(params), "l0130", root=tmp_path)
    assert base.lmbda == params["lambdas"]["l0130"]["lmbda"] and base.metric == "mse"
    assert (
        base.run_name.startswith("l0130-")
        and base.run_name == resolve(parse_params(params), "l0130", root=tmp_path).run_name
    )
    assert base.out_dir == str(tmp_path / "outputs/train/l0130")
    assert base.storage_path == str(tmp_path / "outputs/train/runs")
    assert base.data_version == UNVERSIONED  # no dvc.lock in tmp_path

    more_steps = copy.deepcopy(params)
    more_steps["train"]["steps"]["sample"] += 10
    more_threads = copy.deepcopy(params)
    more_threads["loader"]["workers"] += 1
    assert resolve(parse_params(more_steps), "l0130", root=tmp_path).run_name == base.run_name
    assert resolve(parse_params(more_threads), "l0130", root=tmp_path).run_name == base.run_name
    assert resolve(parse_params(params), "l0130", lmbda=0.02, root=tmp_path).run_name != base.run_name
    assert resolve(parse_params(params), "l0130", metric="ms-ssim", root=tmp_path).run_name != base.run_name

    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump({"stages": {"shard": {"outs": [{"path": params["shards"]["dir"], "md5": "abc.dir"}]}}})
    )
    versioned = resolve(parse_params(params), "l0130", root=tmp_path)
    assert versioned.data_version == "abc.dir" and versioned.run_name != base.run_name


def test_an_explicit_lambda_without_a_table_entry_gets_its_own_key(params, tmp_path) -> None:
    settings = resolve(parse_params(params), lmbda=0.0067, metric="ms-ssim", root=tmp_path)
    assert (settings.key, settings.lmbda, settings.metric) == ("ms-ssim-0.0067", 0.0067, "ms-ssim")


@pytest.mark.parametrize(
    ("key", "overrides", "message"),
    [
        ("nope", {}, "not in the lambdas table"),
        ("l0130", {"metric": "psnr"}, "unknown metric"),
        ("l0130", {"lmbda": -1.0}, "must be positive"),
        ("bad/key", {"lmbda": 0.01}, "lambda key"),
    ],
)
def test_bad_settings_are_user_errors(params, tmp_path, key, overrides, message) -> None:
    with pytest.raises(LicError, match=message):
        resolve(parse_params(params), key, root=tmp_path, **overrides)


def test_training_without_validation_images_is_a_user_error(params, tmp_path) -> None:
    no_validation = copy.deepcopy(params)
    no_validation["shards"]["validation_images"] = 0
    with pytest.raises(LicError, match="validation_images"):
        resolve(parse_params(no_validation), "l0130", root=tmp_path)


def test_tracking_defaults_to_sqlite_at_the_project_root(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    opt = Optimisation(steps=100, lr=1e-4, aux_lr=1e-3, warmup_steps=10, min_lr=1e-5, clip_norm=1.0, amp=False)
    rates = [learning_rate(step, opt) for step in range(100)]
    assert rates[0] == pytest.approx(1e-5) and rates[9] == pytest.approx(1e-4)
    assert all(a < b for a, b in itertools.pairwise(rates[:10]))
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[55] == pytest.approx((1e-4 + 1e-5) / 2)
    assert learning_rate(100, opt) == pytest.approx(1e-5)


def test_warm_up_is_a_share_of_the_run_and_raising_the_budget_continues_the_run(params, tmp_path) -> None:
    assert warmup_steps(0.01, 16) == 1 and warmup_steps(0.01, 2_000_000) == 20_000 and warmup_steps(0.1, 16) == 2
    assert warmup_steps(0.0, 100) == 1  # the rate ramps from lr / warmup_steps: never a zero-length warm-up
    too_long = copy.deepcopy(params)
    too_long["train"]["warmup"] = 1.0
    with pytest.raises(LicError, match=r"train\.warmup = 1\.0: Input should be less than 1"):
        parse_params(too_long)
    full = copy.deepcopy(params)
    full["profile"] = "full"
    settings = resolve(parse_params(full), "l0130", root=tmp_path)
    assert settings.optimisation.steps == 2_000_000 and settings.optimisation.warmup_steps == 20_000
    assert resolve(parse_params(params), "l0130", root=tmp_path).optimisation.warmup_steps == 1  # the sample's 16 steps
    longer = copy.deepcopy(full)
    longer["train"]["steps"]["full"] = 3_000_000  # warm-up becomes 30,000 steps: the same run, continued
    assert resolve(parse_params(longer), "l0130", root=tmp_path).optimisation.warmup_steps == 30_000
    assert resolve(parse_params(longer), "l0130", root=tmp_path).run_name == settings.run_name
    other_share = copy.deepcopy(full)
    other_share["train"]["warmup"] = 0.02
    assert resolve(parse_params(other_share), "l0130", root=tmp_path).run_name != settings.run_name


@pytest.mark.parametrize(("world_size", "batch", "lr"), [(1, 4, 7.0711e-5), (2, 8, 1e-4), (4, 16, 1.4142e-4),
                                                         (8, 32, 2e-4), (32, 128, 4e-4)])  # fmt: skip
def test_the_global_batch_grows_with_the_world_and_the_rate_by_its_square_root(
    params, tmp_path, world_size, batch, lr
) -> None:
    """params.yaml: 4 crops of 256 per rank and lr 1e-4 for a global batch of 8 (the table of docs/training.md)."""
    sized = copy.deepcopy(params)
    sized["train"]["ray"]["num_workers"] = world_size
    assert global_batch(parse_params(sized).loader, world_size) == batch
    settings = resolve(parse_params(sized), "l0130", root=tmp_path)
    assert settings.optimisation.lr == pytest.approx(lr, rel=1e-4)
    assert settings.optimisation.min_lr == params["train"]["min_lr"]  # the floor is not scaled
    assert scaled_lr(1e-4, 4 * batch, batch) == pytest.approx(2e-4)


def test_the_global_batch_counts_the_smallest_crop_of_the_mix(params) -> None:
    large_only = copy.deepcopy(params)
    large_only["loader"]["crop_mix"] = {256: 0.0, 512: 1.0}
    assert global_batch(parse_params(large_only).loader, 2) == 2 * params["loader"]["batch_size"][512]


def test_crop_schedule_follows_the_mix_and_depends_only_on_seed_and_epoch() -> None:
    mix = {256: 0.8, 512: 0.2}
    sizes = [side for epoch in range(100) for side in crop_sizes(mix, 100, seed=5, epoch=epoch)]
    assert abs(Counter(sizes)[512] / len(sizes) - 0.2) < 0.02
    assert crop_sizes(mix, 100, seed=5, epoch=3) == crop_sizes(mix, 100, seed=5, epoch=3)
    assert crop_sizes(mix, 100, seed=5, epoch=3) != crop_sizes(mix, 100, seed=5, epoch=4)
    assert crop_sizes(mix, 100, seed=5, epoch=3) != crop_sizes(mix, 100, seed=6, epoch=3)


def test_crop_schedule_trains_the_smallest_crop_alone_until_the_mix_starts(params) -> None:
    mix = {256: 0.5, 512: 0.5}
    per_epoch = 7  # the boundary, global step 60, falls inside epoch 8 (steps 56-62)
    run = [side for epoch in range(30) for side in crop_sizes(mix, per_epoch, seed=1, epoch=epoch, mix_from_step=60)]
    assert set(run[:60]) == {256} and run[60] == crop_sizes(mix, per_epoch, seed=1, epoch=8)[4]
    assert abs(Counter(run[60:])[512] / len(run[60:]) - 0.5) < 0.15
    assert run[60:] == [side for epoch in range(30) for side in crop_sizes(mix, per_epoch, 1, epoch)][60:]

    full = copy.deepcopy(params)
    full["profile"] = "full"
    assert mix_start_step(parse_params(full)) == 1_200_000  # 0.6 of 2 M steps: where MLIC++ moves to larger crops
    assert mix_start_step(parse_params(params)) == 0  # the sample profile mixes from its first step
    full["loader"]["crop_mix_from"]["full"] = 1.5
    with pytest.raises(LicError, match=r"loader\.crop_mix_from\.full = 1\.5"):
        parse_params(full)


def test_checkpoint_round_trip_restores_weights_optimisers_and_step(tmp_path) -> None:
    torch.manual_seed(0)
    model = build("loclic", **TINY).train()
    optimizer, aux_optimizer = make_optimizers(model, 1e-4, 1e-3)
    x = torch.rand(1, 3, 64, 64)
    RateDistortionLoss(0.01)(model(x), x)["loss"].backward()
    optimizer.step()
    model.aux_loss().backward()
    aux_optimizer.step()
    write_checkpoint(tmp_path, model, optimizer, aux_optimizer, 7, lmbda=0.01, metric="mse")

    torch.manual_seed(1)
    again = build("loclic", **TINY).train()
    optimizer2, aux_optimizer2 = make_optimizers(again, 1e-4, 1e-3)
    assert restore_checkpoint(tmp_path, again, optimizer2, aux_optimizer2) == 7
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert str(optimizer2.state_dict()) == str(optimizer.state_dict())
    assert str(aux_optimizer2.state_dict()) == str(aux_optimizer.state_dict())

    loaded, metadata = load_checkpoint(tmp_path / CHECKPOINT_FILE)  # the stage output is a plain lic checkpoint
    assert metadata == {"step": 7, "lmbda": 0.01, "metric": "mse"}
    assert codec.decompress(loaded, codec.compress(loaded, x)).shape == x.shape  # CDF tables were updated

    with pytest.raises(LicError, match="not this run's"):
        other = build("loclic", N=[8, 8, 16], M=40, slices=4)
        restore_checkpoint(tmp_path, other, *make_optimizers(other, 1e-4, 1e-3))


def test_validation_pads_like_the_codec_and_measures_on_the_original_pixels() -> None:
    torch.manual_seed(0)
    model = build("loclic", **TINY)
    photo = torch.from_numpy(data.astronaut()[:200, :300].copy()).permute(2, 0, 1)[None].float() / 255
    criterion = RateDistortionLoss(lmbda=0.01)
    scores = validate(model.train(), [photo], criterion)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        padded = torch.nn.functional.pad(photo, (10, 10, 28, 28))
        output = model(padded)
    bits = sum(-torch.log2(likelihoods).sum() for likelihoods in output["likelihoods"].values())
    assert scores["bpp"] == pytest.approx(bits.item() / (200 * 300), rel=1e-5)
    mse = torch.mean((output["x_hat"][..., 28:-28, 10:-10].clamp(0, 1) - photo) ** 2).item()
    assert scores["loss"] == pytest.approx(0.01 * 255**2 * mse + scores["bpp"], rel=1e-4)
    assert 0 < scores["psnr"] < 60 and 0 < scores["ms_ssim"] <= 1


def test_meter_reports_throughput_and_the_step_time_split() -> None:
    meter = Meter()
    laps = {"data": 0.1, "forward": 0.4, "backward": 0.4, "optimizer": 0.1}
    meter.add({"loss": 3.0, "mse": 0.01}, samples=4, laps=laps, in_totals=False)
    meter.add({"loss": 1.0, "mse": 0.01}, samples=4, laps=laps, in_totals=True)
    window = meter.window()
    assert window["loss"] == 2.0 and window["samples_per_s"] == pytest.approx(4.0)
    assert window["psnr"] == pytest.approx(20.0) and window["time_forward_s"] == pytest.approx(0.4)
    assert meter.window() == {}
    assert meter.totals()["mean_loss"] == 1.0 and math.isclose(meter.totals()["mean_samples_per_s"], 4.0)


def test_cli_with_an_unknown_lambda_key_is_a_one_line_error(project_root, tmp_path) -> None:
    lic = Path(sys.executable).parent / "lic"
    args = [str(lic), "train", "--key", "l9999", "--config", str(project_root / "params.yaml")]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "not in the lambdas table" in proc.stderr
    assert "Traceback" not in proc.stderr
