"""Checkpoints that rebuild themselves: model name, config and weights (with CDF tables) in one file.

A checkpoint is a plain dict of tensors, strings and numbers so that it loads with `weights_only=True`: loading
a file never executes code from it. `update(force=True)` runs before saving, so a loaded model can entropy-code
straight away; CompressAI's `load_state_dict` resizes the CDF buffers to the saved tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel

from lic.errors import LicError
from lic.io.atomic import atomic_path
from lic.models import ModelSpec, build

# 2: LoC-LIC's LocalContext masks the latent borders by the official rule (lic.models.context.border_mask).
# Format 1 masked them by slot parity, so a format-1 LoC-LIC codes other symbols in a 2-wide frame of the latent;
# it is refused with a clear error. Baseline checkpoints are the same in both formats and load from either.
FORMAT_VERSION = 2
BORDER_RULE_MODELS = ("loclic",)  # the architectures whose coding changed from format 1 to 2
CHECKPOINT_FILE = "model.pt"  # a checkpoint's name wherever one is a folder's model: training outputs, pulled models


def save_checkpoint(path: str | Path, model: CompressionModel, **metadata: Any) -> Path:
    """Update the CDF tables and write {format, model, config, state_dict, metadata...} atomically."""
    spec: ModelSpec = model.spec
    model.update(force=True)
    payload = {
        "format": FORMAT_VERSION,
        "model": spec.name,
        "config": spec.config,
        "state_dict": model.state_dict(),
        "metadata": metadata,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the raw payload safely; a missing, foreign or damaged file is a LicError.

    The tensors are mapped from the file rather than read into fresh memory: loading and building the paper's
    LoC-LIC took 0.8-1.0 s instead of 1.9-2.5 s here, most of a coding command's start after its imports. The
    mapping is private (nothing is written back), and `load_checkpoint` copies the weights into the model at
    once, after which the mapping goes.
    """
    path = Path(path)
    if not path.is_file():
        raise LicError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise LicError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") not in (1, FORMAT_VERSION) or "state_dict" not in payload:
        raise LicError(f"{path} is not a lic checkpoint (format {FORMAT_VERSION})")
    if payload["format"] == 1 and payload.get("model") in BORDER_RULE_MODELS:
        raise LicError(
            f"{path} is a format-1 {payload['model']} checkpoint: its LocalContext masked the latent borders by "
            "parity, which format 2 replaced by the official rule, so this version would code other symbols with "
            "it. Retrain it, or import official weights with `lic import`"
        )
    return payload


def load_checkpoint(path: str | Path) -> tuple[CompressionModel, dict[str, Any]]:
    """Rebuild the model from its recorded name and config and load the weights; returns (model, metadata)."""
    payload = read_checkpoint(path)
    config = payload.get("config")
    if not isinstance(config, dict) or not all(isinstance(key, str) for key in config):
        raise LicError(f"{path}: bad configuration: expected a mapping of setting names, got {config!r:.80}")
    try:
        model = build(payload.get("model"), **config)
    except LicError as err:
        raise LicError(f"{path}: {err}") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise LicError(f"{path}: weights do not fit model {payload['model']!r}: {err}") from err
    return model.eval(), payload["metadata"]
