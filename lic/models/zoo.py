"""One registry for every codec the project builds: LoC-LIC, MLIC++ and the CompressAI baselines.

Training, evaluation, complexity accounting and benchmarks all go through `build(name, **config)`, so a
checkpoint only needs to store the name and the config to be rebuilt without guessing. Baselines are CompressAI
zoo architectures with random weights (nothing is downloaded). Every architecture declares its configuration
as a pydantic model (CONFIGS), checked before anything is built: a config comes from files (checkpoints,
params.yaml) that may be wrong or forged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal

from compressai import zoo
from compressai.models import CompressionModel
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from lic.errors import LicError
from lic.models.loclic import LoCLIC, LoCLICConfig


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, independent of its weights: enough to rebuild it."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)


class BaselineConfig(BaseModel):
    """A CompressAI zoo architecture at one of its rate points (CompressAI refuses qualities an architecture
    lacks: cheng2020 has 1 to 6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: Annotated[StrictInt, Field(ge=1, le=8)] = 6
    metric: Literal["mse", "ms-ssim"] = "mse"


def _zoo_model(architecture: str, quality: int, metric: str) -> CompressionModel:
    return zoo.image_models[architecture](quality=quality, metric=metric, pretrained=False)


class MLICppConfig(LoCLICConfig):
    """MLIC++ (Jiang and Wang, 2024 code): LoC-LIC's network with 192 channels at every transform level.

    LoC-LIC kept MLIC++'s entropy model and slimmed its transforms, so one class builds both; with N = 192 it is
    the official MLIC++ module for module (83.50 M parameters), and official MLIC++ weights import into it.
    """

    N: Annotated[list[Annotated[StrictInt, Field(ge=1, le=512)]], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [192, 192, 192]
    )


BASELINES = (
    "bmshj2018-factorized",
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "cheng2020-attn",
)
_BUILDERS: dict[str, Callable[..., CompressionModel]] = {
    "loclic": LoCLIC,
    "mlicpp": LoCLIC,
    **{name: partial(_zoo_model, name) for name in BASELINES},
}
CONFIGS: dict[str, type[BaseModel]] = {
    "loclic": LoCLICConfig,
    "mlicpp": MLICppConfig,
    **dict.fromkeys(BASELINES, BaselineConfig),
}


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build(name: str, **config: Any) -> CompressionModel:
    """Build a model by registry name from a validated config; the result carries `spec` (the config as given,
    defaults left out) so checkpoints can record it."""
    if not isinstance(name, str) or name not in _BUILDERS:
        raise LicError(f"unknown model {name!r:.80}; known models: {', '.join(list_models())}")
    try:
        settings = CONFIGS[name].model_validate(config)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise LicError(f"bad configuration for model {name!r}: {problems}") from None
    try:
        model = _BUILDERS[name](**settings.model_dump())
    except (TypeError, ValueError) as err:
        raise LicError(f"bad configuration for model {name!r}: {err}") from err
    model.spec = ModelSpec(name, dict(config))
    return model
