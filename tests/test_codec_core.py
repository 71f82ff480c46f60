"""Real rANS bitstreams: exact round trips, agreement with the eval-mode forward pass, checkpoints."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lic import codec
from lic.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from lic.errors import LicError
from lic.models import build
from tests.codec_support import forward_reconstruction

SIZES = [(64, 64), (97, 131), (256, 384), (512, 768)]


@pytest.fixture(scope="module")
def model():
    """LoC-LIC with random weights, its latent scaled up so that y carries thousands of non-zero symbols
    (plain random weights give an almost empty y stream and would test little)."""
    torch.manual_seed(0)
    net = build("loclic").eval()
    with torch.no_grad():
        net.g_a[-1].weight.mul_(40)
    net.update(force=True)
    return net


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "loclic.pt", model, note="test")


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g), (h, w))
    return (0.8 * smooth + 0.2 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_round_trip_is_exact_and_equals_the_eval_forward_pass(model, h, w) -> None:
    x = _image(h, w, seed=h * w)
    coded = codec.compress(model, x)
    assert codec.core.num_bits(coded) > 1000  # a real stream, not an empty one
    first = codec.decompress(model, coded)
    second = codec.decompress(model, coded)
    assert first.shape == x.shape
    assert torch.equal(first, second)
    assert torch.equal(first, forward_reconstruction(model, x))


def test_decoding_does_not_depend_on_the_callers_thread_count(model) -> None:
    """Kernels split reductions by thread; a file encoded on a big server must decode the same on a laptop."""
    coded = codec.compress(model, _image(97, 131, seed=7))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        on_two = codec.decompress(model, coded)
        torch.set_num_threads(1)
        on_one = codec.decompress(model, coded)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(on_two, on_one)


def test_a_fresh_process_decodes_the_same_bits(checkpoint, model, tmp_path) -> None:
    encoded = {}
    for h, w in SIZES:
        x = _image(h, w, seed=h + w)
        coded = codec.compress(model, x)
        encoded[f"{h}x{w}"] = {"streams": coded.streams, "shape": list(coded.latent_shape), "size": [h, w]}
        encoded[f"{h}x{w}"]["x_hat"] = codec.decompress(model, coded)
    torch.save(encoded, tmp_path / "streams.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from lic import codec
        from lic.checkpoint import load_checkpoint
        model, _ = load_checkpoint({str(checkpoint)!r})
        encoded = torch.load({str(tmp_path / "streams.pt")!r}, weights_only=True)
        out = {{}}
        for key, item in encoded.items():
            coded = codec.CodedImage(item["streams"], tuple(item["shape"]), *item["size"])
            out[key] = codec.decompress(model, coded)
        torch.save(out, {str(tmp_path / "decoded.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    decoded = torch.load(tmp_path / "decoded.pt", weights_only=True)
    for key, item in encoded.items():
        assert torch.equal(decoded[key], item["x_hat"]), key


def test_checkpoint_restores_cdf_tables_and_gives_the_same_bytes(checkpoint, model) -> None:
    x = _image(128, 192, seed=1)
    expected = codec.compress(model, x)
    loaded, metadata = load_checkpoint(checkpoint)  # no update() after loading
    assert metadata == {"note": "test"}
    assert loaded.spec == model.spec
    assert codec.compress(loaded, x).streams == expected.streams
    payload = read_checkpoint(checkpoint)
    assert payload["model"] == "loclic" and payload["config"] == {}


def test_checkpoints_rebuild_non_default_configurations(tmp_path) -> None:
    small = build("loclic", N=[8, 16, 32], M=64, slices=4)
    path = save_checkpoint(tmp_path / "small.pt", small)
    loaded, _ = load_checkpoint(path)
    assert loaded.config == {"N": [8, 16, 32], "M": 64, "slices": 4}
    x = _image(64, 64, seed=2)
    assert codec.compress(loaded, x).streams == codec.compress(small.eval(), x).streams


def test_baselines_code_through_the_same_interface() -> None:
    x = _image(97, 131, seed=3)
    for name in ("bmshj2018-factorized", "mbt2018-mean", "cheng2020-anchor"):
        net = build(name, quality=2).eval()
        net.update(force=True)
        coded = codec.compress(net, x)
        assert codec.decompress(net, coded).shape == x.shape


def test_coding_without_cdf_tables_is_a_clear_error() -> None:
    net = build("loclic", N=[8, 16, 32], M=64, slices=4).eval()
    with pytest.raises(ValueError, match="update"):
        codec.compress(net, _image(64, 64, seed=4))


def test_compress_rejects_bad_images(model) -> None:
    with pytest.raises(ValueError, match="one image at a time"):
        codec.compress(model, torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        codec.compress(model, torch.rand(1, 3, 64, 64) * 2)


def test_unreadable_checkpoints_are_clear_errors(tmp_path) -> None:
    with pytest.raises(LicError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LicError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(LicError, match="not a lic checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_each_scale_is_coded_with_the_cdf_compressai_picks(model) -> None:
    """The coder gets only the tables one call uses, renumbered; each scale must still reach CompressAI's table."""
    scales = torch.cat(
        [torch.rand(5000) * 300, torch.tensor([0.0, 0.11, 256.0, 1e6]), model.gaussian_conditional.scale_table]
    )
    indexes, cdfs, lengths, offsets = model._coder_arguments(scales)
    all_cdfs, all_lengths, all_offsets = model._tables()
    original = [next(i for i, table in enumerate(all_cdfs) if table is cdf) for cdf in cdfs]
    assert torch.equal(torch.tensor(original)[indexes].int(), model.gaussian_conditional.build_indexes(scales))
    assert lengths == [all_lengths[i] for i in original] and offsets == [all_offsets[i] for i in original]
    assert len(model._coder_arguments(torch.full((10,), 0.5))[1]) == 1


FORGED_CONFIGS = {
    "config not a dict": ("loclic", [8, 8, 16]),
    "model not a name": (["loclic"], {}),
    "M a string": ("loclic", {"M": "40"}),
    "M a bool": ("loclic", {"M": True, "slices": 1}),
    "M a float": ("loclic", {"M": 40.0, "slices": 2}),
    "M huge": ("loclic", {"M": 200000, "slices": 2}),  # 1.44 TB of weights if it were built
    "N huge": ("loclic", {"N": [8, 8, 1 << 20], "M": 40, "slices": 2}),
    "N two levels": ("loclic", {"N": [8, 8], "M": 40, "slices": 2}),
    "slices not dividing M": ("loclic", {"N": [8, 8, 16], "M": 40, "slices": 3}),
    "unknown key": ("loclic", {"N": [8, 8, 16], "M": 40, "slices": 2, "gpu": "yes"}),
    "quality a string": ("mbt2018-mean", {"quality": "6"}),
    "quality out of range": ("mbt2018-mean", {"quality": 80}),
    "metric unknown": ("mbt2018-mean", {"quality": 1, "metric": "psnr"}),
}


def test_forged_checkpoint_configs_are_clear_errors_before_any_model_is_built(tmp_path) -> None:
    """A checkpoint that loads with weights_only=True can still carry a config of the wrong type or an absurd
    size; each is refused with a LicError that names the checkpoint and the bad field, before building."""
    payload = read_checkpoint(save_checkpoint(tmp_path / "good.pt", build("loclic", N=[8, 8, 16], M=40, slices=2)))
    payload["state_dict"] = {}  # never reached: the config is refused first
    for case, (name, config) in FORGED_CONFIGS.items():
        path = tmp_path / f"{case.replace(' ', '-')}.pt"
        torch.save({**payload, "model": name, "config": config}, path)
        with pytest.raises(LicError, match=f"{path}: (bad configuration|unknown model)") as caught:
            load_checkpoint(path)
        assert "\n" not in str(caught.value), case
    assert "M: Input should be less than or equal to 640" in _message(tmp_path / "M-huge.pt")
    assert "gpu" in _message(tmp_path / "unknown-key.pt")
    assert "slices=3" in _message(tmp_path / "slices-not-dividing-M.pt")


def _message(path: Path) -> str:
    with pytest.raises(LicError) as caught:
        load_checkpoint(path)
    return str(caught.value)


def test_every_registered_model_declares_its_configuration() -> None:
    from lic.models.zoo import CONFIGS, list_models

    assert sorted(CONFIGS) == list_models()  # a new architecture needs its pydantic configuration too
