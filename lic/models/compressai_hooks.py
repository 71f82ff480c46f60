"""Our architectures in CompressAI's own tables, so CompressAI's tools know them by name.

`compressai.registry.MODELS` (what `register_model` fills) is where CompressAI's training examples look models
up; `compressai.zoo.image_models` is the `-a/--architecture` choice list of `compressai.utils.eval_model`, and
`compressai.zoo.image.model_architectures` the classes its `checkpoint` mode rebuilds with `from_state_dict`.
`import lic.models` fills all three. CompressAI 1.2.8 has no plugin entry point, so a tool started on its own
(`python -m compressai.utils.eval_model`) cannot know lic is installed: `python -m lic.eval.compressai_eval` is
that same tool with lic imported first (docs/evaluation.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from compressai import zoo
from compressai.models import CompressionModel
from compressai.registry import register_model
from compressai.zoo import image as zoo_image

from lic.models.loclic import LoCLIC

ARCHITECTURES: dict[str, type[CompressionModel]] = {"loclic": LoCLIC}


def _zoo_entry(
    architecture: str, quality: int, metric: str = "mse", pretrained: bool = False, progress: bool = True, **config: Any
) -> CompressionModel:
    """The signature of CompressAI's zoo functions. There are no published weights to download: a trained model
    is a checkpoint (`eval_model checkpoint -p model.pt`), so only an untrained one is built here."""
    if pretrained:
        raise ValueError(
            f"{architecture} has no pretrained weights in CompressAI's zoo: evaluate a lic checkpoint "
            f"(python -m lic.eval.compressai_eval checkpoint IMAGES -a {architecture} -p model.pt)"
        )
    return ARCHITECTURES[architecture](**config)


def register() -> None:
    """Add every architecture to CompressAI's registry and zoo tables (idempotent; CompressAI's own names win)."""
    for name, cls in ARCHITECTURES.items():
        register_model(name)(cls)
        zoo_image.model_architectures.setdefault(name, cls)
        zoo.image_models.setdefault(name, partial(_zoo_entry, name))
        zoo.models.setdefault(name, zoo.image_models[name])
