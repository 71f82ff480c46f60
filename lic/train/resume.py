"""What a training checkpoint folder holds, so a run can stop anywhere and continue as if it had not.

- `model.pt`: a lic checkpoint (lic.checkpoint: CDF tables updated, rebuilds itself, loads with
  weights_only=True), with the run's metadata; the final one is the stage's output;
- `state.pt`: the two optimisers' state and the step count.

The learning rate is a function of the step (lic.train.schedule) and the data order a function of the epoch, so
nothing else is needed to resume. Ray uploads the folder to the run's storage and keeps the best and the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel
from torch import optim

from lic.checkpoint import CHECKPOINT_FILE, read_checkpoint, save_checkpoint
from lic.errors import LicError

STATE = "state.pt"


def write_checkpoint(
    directory: Path,
    model: CompressionModel,
    optimizer: optim.Optimizer,
    aux_optimizer: optim.Optimizer,
    step: int,
    **metadata: Any,
) -> Path:
    """Fill `directory` (a fresh temporary folder that Ray then uploads) and return the model file."""
    model_file = save_checkpoint(directory / CHECKPOINT_FILE, model, step=step, **metadata)
    state = {"step": step, "optimizer": optimizer.state_dict(), "aux_optimizer": aux_optimizer.state_dict()}
    torch.save(state, directory / STATE)
    return model_file


def restore_checkpoint(
    directory: Path, model: CompressionModel, optimizer: optim.Optimizer, aux_optimizer: optim.Optimizer
) -> int:
    """Load weights and optimiser state from a checkpoint folder; returns the number of steps it had done."""
    payload = read_checkpoint(directory / CHECKPOINT_FILE)
    if payload["model"] != model.spec.name or payload["config"] != model.spec.config:
        raise LicError(f"{directory} holds a {payload['model']} {payload['config']} model, not this run's")
    model.load_state_dict(payload["state_dict"])
    state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    aux_optimizer.load_state_dict(state["aux_optimizer"])
    return int(state["step"])
