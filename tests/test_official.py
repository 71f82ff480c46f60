"""Official LoC-LIC and MLIC++ checkpoints: the mapping rules, `lic import`, and MLIC++ in the zoo (issue 19).

The official-layout files are built from the key tables of the reference fact sheet (tests/reference/, one row
per tensor of the official state dict with its shape), filled with random tensors and saved in the official
wrapper, the way the official training scripts save them.
"""

from __future__ import annotations

import csv
import os
import pickle
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lic.checkpoint import load_checkpoint
from lic.errors import LicError
from lic.models import build
from lic.models.official import CODER_BUFFERS, DROP, import_official, map_state_dict, project_key, qkv_rows

TABLES = Path(__file__).parent / "reference"
SOURCES = {"loclic": "loclic-official", "mlicpp": "mlicpp-official"}
# Fact sheet §8: parameters per top-level module of the official MLIC++ 2024 model.
MLICPP_PARAMETERS = {
    "entropy_bottleneck": 11_712, "g_a": 4_396_352, "g_s": 14_700_172, "h_a": 1_881_024, "h_s": 16_685_600,
    "local_context": 755_220, "channel_context": 5_810_112, "global_inter_context": 4_633_344,
    "global_intra_context": 659_232, "entropy_parameters_anchor": 3_837_440,
    "entropy_parameters_nonanchor": 4_226_560, "lrp_anchor": 12_952_320, "lrp_nonanchor": 12_952_320,
}  # fmt: skip


def _table(name: str) -> list[dict[str, str]]:
    with open(TABLES / f"{name}_official_keys.csv", newline="") as f:
        return list(csv.DictReader(f))


def _shape(text: str) -> tuple[int, ...]:
    return () if text == "scalar" else tuple(int(d) for d in text.split("x"))


def _official_state(ours: dict[str, torch.Tensor], model: str, seed: int = 0, table: str | None = None):
    """A random state dict in the official layout: every tensor of the table with its listed shape and dtype.

    Constant buffers (GDN pedestals, bounds) carry our model's values, as real files do; weights are small random
    numbers, the entropy bottleneck's quantiles are ordered as after training. `ours` is our model's state dict.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for row in _table(table or model):
        shape, key, target = _shape(row["shape"]), row["official_key"], row["project_key"]
        if row["dtype"].startswith("int"):
            state[key] = torch.randint(0, 1000, shape, generator=g, dtype=getattr(torch, row["dtype"]))
        elif key.endswith("quantiles"):
            state[key] = torch.tensor([-8.0, 0.0, 8.0]).expand(shape).clone()
        elif target in ours and target.rsplit(".", 1)[-1] in ("pedestal", "bound", "target", "scale_bound"):
            state[key] = ours[target].clone()
        elif key.endswith(("gdn.beta", "igdn.beta")):
            state[key] = 1 + 0.1 * torch.rand(shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


def _official_file(path: Path, state: dict[str, torch.Tensor], scheduler: str = "lambda") -> Path:
    """The six wrapper keys of an official training checkpoint, with real optimiser and scheduler states."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=1e-4)
    param.grad = torch.ones(3)
    optimizer.step()
    if scheduler == "lambda":
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    else:
        lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [80, 100], 0.1)
    torch.save(
        {
            "epoch": 42,
            "state_dict": state,
            "loss": torch.tensor(1.25),
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3).state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
        },
        path,
    )
    return path


@pytest.mark.parametrize("model", ["loclic", "mlicpp", "mlicpp_old"])
def test_the_rules_send_every_official_key_where_the_key_table_says(model) -> None:
    for row in _table(model):
        target = project_key(row["official_key"])
        if row["transform"].startswith("drop"):
            assert target is DROP or row["official_key"] in CODER_BUFFERS, row
        elif row["transform"].startswith("no counterpart"):
            continue  # the 2023 layout: refused as a whole (test below)
        else:
            assert target == row["project_key"], row


def test_mlicpp_in_the_zoo_is_the_official_mlicpp_module_by_module() -> None:
    model = build("mlicpp")
    parameters = dict(model.named_parameters())
    from_table: dict[str, int] = defaultdict(int)
    for row in _table("mlicpp"):
        if row["project_key"] in parameters:
            assert parameters[row["project_key"]].shape == _shape(row["shape"]), row
            from_table[row["project_key"].split(".")[0]] += parameters[row["project_key"]].numel()
    ours = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    ours = {name: count for name, count in ours.items() if count}
    assert ours == dict(from_table) == MLICPP_PARAMETERS
    assert sum(ours.values()) == 83_501_408


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: build(name) for name in SOURCES}


@pytest.fixture(scope="module")
def loclic_state(models) -> dict[str, torch.Tensor]:
    return _official_state(models["loclic"].state_dict(), "loclic")


@pytest.fixture(scope="module")
def loclic_file(loclic_state, tmp_path_factory) -> Path:
    """An official LoC-LIC file as a single-GPU run with CompressAI <= 1.2.6 saves it (empty CDF tables)."""
    assert not any(loclic_state[key].numel() for key in CODER_BUFFERS)  # the table lists them empty (§3)
    return _official_file(tmp_path_factory.mktemp("official") / "checkpoint_best_loss.pth.tar", loclic_state)


def _check_landing(state: dict[str, torch.Tensor], imported: torch.nn.Module, fresh: torch.nn.Module) -> None:
    """Named weights are where the rules send them, compared by value."""
    ours = imported.state_dict()
    rows = torch.arange(96)
    expected_rows = torch.cat([t * 32 + torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)]) for t in range(3)])
    assert torch.equal(qkv_rows(32, 2), expected_rows)  # ours 0..15 <- official 0, 2, ..., 30; 16..31 <- 1, ..., 31
    for i in range(10):
        official_w, official_b = state[f"local_context.{i}.qkv_proj.weight"], state[f"local_context.{i}.qkv_proj.bias"]
        assert torch.equal(ours[f"local_context.{i}.qkv.weight"][rows], official_w[expected_rows])
        assert torch.equal(ours[f"local_context.{i}.qkv.bias"], official_b[expected_rows])
        assert torch.equal(
            ours[f"local_context.{i}.position_bias"], state[f"local_context.{i}.relative_position_table"]
        )
        assert torch.equal(ours[f"local_context.{i}.mlp.3.weight"], state[f"local_context.{i}.mlp.fc2.weight"])
    for i in range(1, 10):  # official slices 1..9 are ours 0..8; queries/keys/values matched by name, not order
        for official, project in (("queries", "query"), ("keys", "key"), ("values", "value")):
            for kind in ("inter", "intra"):
                assert torch.equal(
                    ours[f"global_{kind}_context.{i - 1}.{project}.0.weight"],
                    state[f"global_{kind}_context.{i}.{official}.0.weight"],
                )
        assert torch.equal(ours[f"channel_context.{i - 1}.0.0.weight"], state[f"channel_context.{i}.fushion.0.weight"])
    assert torch.equal(ours["entropy_bottleneck.matrices.2"], state["entropy_bottleneck._matrix2"])
    assert torch.equal(ours["g_s.1.subpel.0.weight"], state["g_s.synthesis_transform.1.subpel_conv.0.weight"])
    # Every parameter came from the file: none keeps the value a fresh model is built with.
    built = dict(fresh.named_parameters())
    for key, value in imported.named_parameters():
        assert not torch.equal(value, built[key]), key


def test_an_official_loclic_file_imports_completely_and_every_tensor_lands_by_the_rules(
    models, loclic_state, loclic_file
) -> None:
    _check_landing(loclic_state, import_official(loclic_file, "loclic-official"), models["loclic"])


def test_a_data_parallel_mlicpp_file_with_filled_tables_and_new_names_imports_completely(models, tmp_path) -> None:
    """MLIC++ as its training script saves it after update(): filled CDF tables; DDP's `module.` prefix; the
    entropy bottleneck's names of CompressAI >= 1.2.7."""
    state = _official_state(models["mlicpp"].state_dict(), "mlicpp")
    assert all(state[key].numel() for key in CODER_BUFFERS)
    renamed = {}
    for key, value in state.items():
        for old, new in (("_matrix", "matrices."), ("_bias", "biases."), ("_factor", "factors.")):
            if key.startswith(f"entropy_bottleneck.{old}"):
                key = key.replace(old, new)
        renamed[key] = value
    path = _official_file(tmp_path / "checkpoint.pth.tar", {f"module.{k}": v for k, v in renamed.items()}, "step")
    _check_landing(state, import_official(path, "mlicpp-official"), models["mlicpp"])


def _expect_refusal(models, state: dict[str, torch.Tensor], source: str, *patterns: str) -> None:
    model = models[{"loclic-official": "loclic", "mlicpp-official": "mlicpp"}[source]]
    with pytest.raises(LicError) as caught:
        map_state_dict(state, model, source)
    message = str(caught.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, message


def test_a_missing_key_is_refused_by_name(models, loclic_state) -> None:
    state = dict(loclic_state)
    del state["lrp_nonanchor.7.lrp_transform.2.bias"]
    _expect_refusal(models, state, "loclic-official", "1 missing keys", "lrp_nonanchor.7.convs.2.bias")


def test_an_extra_key_is_refused_by_name(models, loclic_state) -> None:
    state = {**loclic_state, "local_context.3.extra.weight": torch.zeros(3), "decoder.bias": torch.zeros(1)}
    _expect_refusal(models, state, "loclic-official", "2 unknown keys", "decoder.bias", "local_context.3.extra")


def test_a_wrong_shape_is_refused_with_both_shapes(models, loclic_state) -> None:
    state = {**loclic_state, "h_s.increase.4.weight": torch.zeros(480, 320, 1, 1)}
    _expect_refusal(
        models, state, "loclic-official", "1 mis-shaped", "h_s.increase.4.weight 480x320x1x1 (model 480x320x3x3)"
    )


def test_weights_of_the_other_architecture_are_refused(models, loclic_state) -> None:
    _expect_refusal(
        models, loclic_state, "mlicpp-official", "mis-shaped", "entropy_bottleneck.quantiles 128x1x3 (model 192x1x3)"
    )


def test_the_2023_mlicpp_layout_is_refused_with_a_message_that_says_so(models) -> None:
    _expect_refusal(
        models,
        _official_state(models["mlicpp"].state_dict(), "mlicpp", table="mlicpp_old"),
        "mlicpp-official",
        "2023 MLIC++",
    )


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"g_a.analysis_transform.0.conv1.weight": _RunsCode(marker)}}, f, protocol=2)
    with pytest.raises(LicError, match="does not load as plain weights"):
        import_official(path, "loclic-official")
    assert not marker.exists()
    torch.save({"state_dict": {"x": _RunsCode(marker)}}, tmp_path / "evil2.pt")
    with pytest.raises(LicError, match="Refusing to unpickle"):
        import_official(tmp_path / "evil2.pt", "loclic-official")
    assert not marker.exists()


def test_lic_import_writes_a_checkpoint_that_codes_and_decodes(loclic_file, tmp_path, monkeypatch) -> None:
    from lic import codec
    from lic.cli import app
    from lic.codec.images import to_tensor

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["import", str(loclic_file), "--from", "loclic-official", "--lmbda", "0.0067", "--metric", "mse"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model, metadata = load_checkpoint(tmp_path / "loclic-mse-0.0067.pt")
    assert model.spec.name == "loclic" and (metadata["lmbda"], metadata["metric"]) == (0.0067, "mse")
    assert metadata["imported_from"] == "loclic-official" and metadata["source_file"] == loclic_file.name
    pixels = (torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    data = codec.encode(pixels, model)
    assert codec.decode(data, model).size == (128, 96)
    x = to_tensor(pixels)
    coded = codec.compress(model, x)
    with torch.no_grad(), codec.determinism.deterministic():
        forward = model(codec.core.pad(x))["x_hat"][..., :96, :128].clamp(0, 1)
    assert torch.equal(codec.decompress(model, coded), forward)

    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "exists" in str(again.exception)
    wrong = runner.invoke(app, ["import", str(loclic_file), "--from", "elic-official"])
    assert "--from must be one of" in str(wrong.exception)
    bad = runner.invoke(
        app, ["import", str(loclic_file), "--from", "loclic-official", "--lmbda", "1", "--metric", "l1"]
    )
    assert "unknown distortion metric" in str(bad.exception)
    assert "--register" in runner.invoke(app, ["import", "--help"]).output
