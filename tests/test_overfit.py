"""A briefly trained LoC-LIC: the RD loss falls, and real bitstreams match the likelihood estimate."""

from __future__ import annotations

import pytest
import torch
from skimage import data

from lic import codec
from lic.codec.determinism import deterministic
from lic.models import build
from lic.train.objective import RateDistortionLoss, make_optimizers

STEPS = 300
STREAM_OVERHEAD_BYTES = 16  # rANS state flush and alignment, per stream


@pytest.fixture(scope="module")
def trained():
    """A small LoC-LIC overfitted on one 256x256 photo; returns the model, the photo and the loss history."""
    torch.manual_seed(0)
    photo = torch.from_numpy(data.astronaut()[:256, 128:384].copy()).permute(2, 0, 1)[None].float() / 255
    model = build("loclic", N=[8, 16, 32], M=64, slices=2).train()
    criterion = RateDistortionLoss(lmbda=0.05)
    optimizer, aux_optimizer = make_optimizers(model, lr=1e-3, aux_lr=1e-2)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        loss = criterion(model(photo), photo)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
        losses.append(loss.item())
    model.eval().update(force=True)
    return model, photo, losses


@pytest.mark.slow
def test_overfitting_one_photo_halves_the_rd_loss(trained) -> None:
    _, _, losses = trained
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert end < 0.5 * start, (start, end)


@pytest.mark.slow
def test_bitstream_length_matches_the_likelihood_estimate(trained) -> None:
    model, photo, _ = trained
    with torch.no_grad():
        likelihoods = model(photo)["likelihoods"]
    coded = codec.compress(model, photo)
    for stream, name in zip(coded.streams, ("y", "z"), strict=True):
        estimate = -torch.log2(likelihoods[name]).sum().item() / 8
        assert abs(len(stream) - estimate) <= 0.01 * estimate + STREAM_OVERHEAD_BYTES, (name, len(stream), estimate)
    with torch.no_grad(), deterministic():
        forward = model(photo)["x_hat"].clamp(0, 1)
    assert torch.equal(codec.decompress(model, coded), forward)
