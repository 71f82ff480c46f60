"""Registered model names: one registered model per rate point, so a user asks for a rate point by name.

    <model>-<metric>-<lambda>      e.g. loclic-mse-0.013, loclic-mse-0.0018, loclic-ms-ssim-8.73

`model` is the architecture's registry name (`lic.models.build`), `metric` the distortion it was trained for
(mse or ms-ssim) and `lambda` the rate-distortion trade-off in Python's shortest form (`format(lmbda, "g")`).
Higher lambda, higher rate. Versions of one name are successive trainings of that rate point; the aliases
`candidate` (the latest registered) and `champion` (the one that passed the promotion gate) pick one, e.g.
`models:/loclic-mse-0.013@champion`.
"""

from __future__ import annotations

from lic.errors import LicError
from lic.params import METRICS


def registered_name(model: str, metric: str, lmbda: float) -> str:
    if metric not in METRICS:
        raise LicError(f"unknown distortion metric {metric!r}; expected one of {', '.join(METRICS)}")
    if not lmbda > 0:
        raise LicError(f"lambda must be positive, got {lmbda}")
    return f"{model}-{metric}-{format(float(lmbda), 'g')}"
