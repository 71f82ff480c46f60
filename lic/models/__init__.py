"""Codec models: LoC-LIC and the CompressAI baselines behind one registry (also known to CompressAI's tools)."""

from lic.models import compressai_hooks
from lic.models.loclic import LoCLIC
from lic.models.zoo import BASELINES, ModelSpec, build, list_models

compressai_hooks.register()

__all__ = ["BASELINES", "LoCLIC", "ModelSpec", "build", "list_models"]
