"""Codec models: LoC-LIC and the CompressAI baselines behind one registry."""

from lic.models.loclic import LoCLIC
from lic.models.registry import BASELINES, ModelSpec, build, list_models

__all__ = ["BASELINES", "LoCLIC", "ModelSpec", "build", "list_models"]
