"""Schedules over the optimiser steps of a run: the learning rate, the warm-up length, the crop sizes, and the
learning rate's rule when the world size changes.

Pure functions of the step (nanoGPT's `get_lr`) rather than scheduler objects: a resumed run only needs its step
count to be back on every schedule, with no scheduler state in the checkpoint. LoC-LIC's own recipe is the same
shape (warm-up, cosine to 1e-5), stepped per epoch there and per optimiser step here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lic.errors import LicError

if TYPE_CHECKING:
    from lic.params import Params
    from lic.train.settings import Optimisation


def learning_rate(step: int, opt: Optimisation) -> float:
    """The rate for optimiser step `step` (0-based) of `opt.steps`."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    decay_steps = max(1, opt.steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / decay_steps)
    return opt.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (opt.lr - opt.min_lr)


def warmup_steps(share: float, steps: int) -> int:
    """Warm-up proportional to the run: `share` of its `steps` (in [0, 1): lic.params), rounded, at least one."""
    return max(1, round(share * steps))


def scaled_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    """The square-root rule for Adam: `lr` is right for `reference_batch` images per step; a run whose global
    batch (ranks x batch per rank) is k times that uses sqrt(k) x `lr`, which keeps the update's noise scale
    (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms"; linear scaling is
    SGD's rule and overshoots with Adam)."""
    if global_batch < 1 or reference_batch < 1:
        raise LicError(f"batches must be positive, got global {global_batch} and reference {reference_batch}")
    return lr * math.sqrt(global_batch / reference_batch)


def mix_start_step(params: Params) -> int:
    """The first step that draws from `loader.crop_mix`; steps before it all use the mix's smallest crop size.
    `loader.crop_mix_from[profile]` is a share of the run's `train.steps[profile]` (none for a profile: 0)."""
    share = params.loader.crop_mix_from.get(params.profile, 0.0)
    return round(share * params.train.steps.get(params.profile, 0))


def crop_sizes(mix: dict[int, float], steps: int, seed: int, epoch: int, mix_from_step: int = 0) -> list[int]:
    """The crop size of every step of epoch `epoch` (steps `epoch * steps` onwards): the smallest size of `mix`
    before global step `mix_from_step`, then independent draws from `mix`. Seeded by (seed, epoch) alone, so
    every rank computes the same sequence (DDP's collectives line up) and a resumed run repeats it."""
    sides = sorted(mix)
    draws = np.random.default_rng([seed, epoch]).choice(sides, size=steps, p=[mix[side] for side in sides])
    first = epoch * steps
    return [sides[0] if first + i < mix_from_step else int(side) for i, side in enumerate(draws)]
