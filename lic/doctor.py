"""Checks of the installed stack, for `lic doctor` and for the install troubleshooting in the README.

Each check names a pitfall users actually hit: numpy 2 pulled in by opencv breaks compressai, ffcv's native
extension missing when the system packages were absent at build time, the rANS coder not importable.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any


def _check(name: str, fn) -> dict[str, Any]:
    try:
        return {"name": name, "ok": True, "detail": fn()}
    except Exception as err:  # a check reports any failure, it never raises
        return {"name": name, "ok": False, "detail": f"{type(err).__name__}: {err}"}


def _numpy() -> str:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise RuntimeError(f"numpy {numpy.__version__} installed; compressai 1.2.8 needs numpy<2")
    return numpy.__version__


def _torch() -> str:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"{torch.__version__} ({device}, {torch.get_num_threads()} threads)"


def _compressai() -> str:
    from compressai import ans  # the C++ rANS coder

    ans.BufferedRansEncoder()
    return importlib.metadata.version("compressai")


def _ffcv() -> str:
    from ffcv import libffcv  # loads the native extension

    assert libffcv.lib is not None
    return importlib.metadata.version("ffcv")


def _module_version(module: str, dist: str):
    def check() -> str:
        importlib.import_module(module)
        return importlib.metadata.version(dist)

    return check


def run_checks() -> list[dict[str, Any]]:
    """Run every check; the report says what is broken instead of failing at the first problem."""
    return [
        _check("numpy", _numpy),
        _check("torch", _torch),
        _check("compressai", _compressai),
        _check("ffcv", _ffcv),
        _check("ray", _module_version("ray.train", "ray")),
        _check("mlflow", _module_version("mlflow", "mlflow")),
        _check("dvc", _module_version("dvc", "dvc")),
    ]
