"""A short fingerprint of a model: which network, configured how, with which weights and CDF tables.

A .lic file records the fingerprint of the model that made it, so that decoding with any other model (another
rate point, another training run, the same weights with rebuilt CDF tables) fails with a clear error instead of
producing noise. It hashes the registry name, the config and every tensor of the state dict (CDF buffers
included): a model loaded from a checkpoint has the same fingerprint as the model that was saved.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from lic.codec.container import FINGERPRINT_BYTES

if TYPE_CHECKING:
    from torch import nn

_CACHE_ATTRIBUTE = "_lic_fingerprint"


def fingerprint(model: nn.Module) -> str:
    """Hex digest (8 characters) of the model's name, config and state dict.

    Hashing LoC-LIC's 70 M parameters and CDF tables takes 0.2 s, so the result is computed once per model
    object and kept on it. Codec models are frozen; a model trained further keeps its first fingerprint.
    """
    import torch  # here, not at the top: `lic.codec` exports this name eagerly and must stay torch-free

    cached = getattr(model, _CACHE_ATTRIBUTE, None)
    if cached is not None:
        return cached
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("the model has no registry spec: build it with lic.models.build or load a lic checkpoint")
    digest = hashlib.sha256(json.dumps([spec.name, spec.config], sort_keys=True).encode())
    for key, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    value = digest.hexdigest()[: 2 * FINGERPRINT_BYTES]
    setattr(model, _CACHE_ATTRIBUTE, value)
    return value
