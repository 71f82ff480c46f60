"""CompressAI's own tools know our models: its registry and zoo tables, `from_state_dict`, and `eval_model` run as
a real process on one of our checkpoints, giving the numbers `lic evaluate` gives on the same images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from compressai.registry import MODELS
from compressai.zoo import image_models
from compressai.zoo.image import model_architectures

from lic import codec
from lic.checkpoint import load_checkpoint, read_checkpoint
from lic.eval.evaluate import evaluate_checkpoint
from lic.models import LoCLIC, build
from lic.models.loclic import config_from_state_dict
from tests import eval_support
from tests.eval_support import eval_images, eval_manifest, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Both sides a multiple of 64: CompressAI pads with zeros around the image, lic by edge replication at the
# bottom and right, so only unpadded images code the same symbols in both tools.
CROPS_MULTIPLE_OF_64 = {"astronaut.png": (0, 0, 256, 192), "chelsea.png": (120, 40, 312, 232)}


def test_our_architecture_is_in_compressais_tables() -> None:
    assert MODELS["loclic"] is LoCLIC and model_architectures["loclic"] is LoCLIC
    assert isinstance(image_models["loclic"](quality=1, N=[8, 8, 16], M=40, slices=2), LoCLIC)
    with pytest.raises(ValueError, match="no pretrained weights"):
        image_models["loclic"](quality=1, pretrained=True)


def test_from_state_dict_rebuilds_the_config_from_weights_or_checkpoint(tmp_path) -> None:
    payload = read_checkpoint(tiny_checkpoint(tmp_path / "model.pt"))
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    assert config_from_state_dict(payload["state_dict"]) == {"N": [8, 8, 16], "M": 40, "slices": 2}
    for source in (payload, payload["state_dict"]):
        rebuilt = LoCLIC.from_state_dict(source)
        assert rebuilt.config == {"N": [8, 8, 16], "M": 40, "slices": 2}
        expected = loaded.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in rebuilt.state_dict().items())
    assert config_from_state_dict(build("loclic").state_dict()) == {"N": [32, 64, 128], "M": 320, "slices": 10}
    with pytest.raises(ValueError, match="not a LoC-LIC state dict"):
        config_from_state_dict({"conv.weight": torch.zeros(1)})


@pytest.mark.integration
def test_compressai_eval_model_gives_lic_evaluates_numbers(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(eval_support, "EVAL_CROPS", CROPS_MULTIPLE_OF_64)
    images = tmp_path / "images"
    manifest = eval_manifest(images)
    manifest = manifest.rename(tmp_path / manifest.name)  # eval_model reads every image file in the folder
    checkpoint = tiny_checkpoint(tmp_path / "model.pt")
    # what `lic evaluate` runs
    results = evaluate_checkpoint(checkpoint, manifest, tmp_path / "lic-evaluate", complexity_size=64)
    ours = results["datasets"]["sample"]

    done = subprocess.run(
        [sys.executable, "-m", "lic.eval.compressai_eval", "checkpoint", images, "-a", "loclic", "-p", checkpoint],
        capture_output=True,
        text=True,
        timeout=900,  # tens of seconds on a quiet machine: it imports torch, CompressAI, torchvision
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout)["results"]

    # CompressAI counts the entropy-coded streams; a .lic file adds its header (docs/bitstream.md).
    model, _ = load_checkpoint(checkpoint)
    stream_bpp = []
    for image in eval_images(images):
        data = codec.encode(image, model)
        stream_bytes = len(data) - codec.read_header(data).header_bytes
        stream_bpp.append(stream_bytes * 8 / (image.width * image.height))
    assert theirs["bpp"][0] == pytest.approx(sum(stream_bpp) / len(stream_bpp), rel=1e-9)
    assert ours["bpp"] > theirs["bpp"][0]  # the header, nothing else
    assert theirs["psnr-rgb"][0] == pytest.approx(ours["psnr"], abs=1e-3)
    assert theirs["ms-ssim-rgb"][0] == pytest.approx(ours["ms_ssim"], abs=1e-4)
