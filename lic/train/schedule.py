"""The learning rate as a function of the step: linear warm-up, then cosine decay to a floor.

A pure function of the step (nanoGPT's `get_lr`) rather than a scheduler object: a resumed run only needs its
step count to be back on the schedule, with no scheduler state in the checkpoint. LoC-LIC's own recipe is the
same shape (warm-up, cosine to 1e-5), stepped per epoch there and per optimiser step here.
"""

from __future__ import annotations

import math

from lic.train.settings import Optimisation


def learning_rate(step: int, opt: Optimisation) -> float:
    """The rate for optimiser step `step` (0-based) of `opt.steps`."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    decay_steps = max(1, opt.steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / decay_steps)
    return opt.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (opt.lr - opt.min_lr)
