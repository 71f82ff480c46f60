"""The MLflow model registry: trained, evaluated checkpoints become versions users can pull by rate point.

Naming (naming.py), the pyfunc codec (pyfunc.py), registration (register.py), the promotion gate
(promotion.py) and downloads (downloads.py). Works with MLflow's local SQLite store and with a remote `mlflow server`
(artifacts in S3 or elsewhere). docs/registry.md describes the scheme for users.

The names below are imported on first use: MLflow and torch take seconds to import, and `lic --help` (which
imports this package for its sub-commands) should not wait for them.
"""

from importlib import import_module

_EXPORTS = {
    "fetch_checkpoint": "lic.registry.downloads",
    "pull": "lic.registry.downloads",
    "register_checkpoint": "lic.registry.register",
    "promote": "lic.registry.promotion",
    "registered_name": "lic.registry.naming",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lic.registry' has no attribute {name!r}")
