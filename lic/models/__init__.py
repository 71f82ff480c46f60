"""Codec models: LoC-LIC and the CompressAI baselines behind one registry."""

from lic.models.loclic import LoCLIC
from lic.models.zoo import BASELINES, ModelSpec, build, list_models

__all__ = ["BASELINES", "LoCLIC", "ModelSpec", "build", "list_models"]
