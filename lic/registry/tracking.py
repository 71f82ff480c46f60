"""Where the registry lives, and MLflow's failures turned into one-line user errors.

The tracking URI comes from MLflow's own resolution: `MLFLOW_TRACKING_URI` (a server, e.g. the local stack's),
else `sqlite:///mlflow.db` in the working directory. Credentials for a server or its S3 artifact store come only
from the environment, as MLflow and boto3 read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lic.errors import LicError

HEALTH_TIMEOUT_S = 5


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def client() -> MlflowClient:
    """A client for the configured store, after checking that a remote server answers at all.

    Without the check an unreachable server costs minutes: MLflow retries every request with backoff.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
        except requests.RequestException as err:
            raise LicError(f"MLflow tracking server {uri} is unreachable ({type(err).__name__})") from None
    return MlflowClient()


def is_not_found(err: MlflowException) -> bool:
    """Missing names, versions and aliases (a missing alias is INVALID_PARAMETER_VALUE "... not found")."""
    return err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in err.message.lower()


@contextmanager
def registry_errors(what: str) -> Iterator[None]:
    """MLflow errors about `what` (a model URI, a name) become LicErrors naming it and the store."""
    try:
        yield
    except MlflowException as err:
        reason = "not found" if is_not_found(err) else err.message.splitlines()[0]
        raise LicError(f"{what}: {reason} (MLflow store {tracking_uri()})") from err
