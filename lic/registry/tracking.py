"""Where the MLflow store is, resolved in this one place for all of lic, and MLflow's failures as one-line errors.

The store is, in this order:

1. the one the caller named: `MLFLOW_TRACKING_URI` (a server such as the local stack's, or a SQLite file), or
   `mlflow.set_tracking_uri` earlier in the same process;
2. inside a LoC-LIC project (the working directory or a folder above it holds params.yaml or dvc.yaml), the
   project's own store, `sqlite:///<project>/mlflow.db`: the file `make pipeline` writes, whichever subfolder a
   command runs from;
3. none: outside a project with nothing named, a command says how to name the store instead of guessing.

A relative `sqlite:///` path is made absolute here (against the working directory), so Ray workers, which run in
folders of their own, write the same file. Reading never creates a store: MLflow would create an empty SQLite file
on first contact and then report the model missing, so readers (`client(create=False)`) refuse a SQLite file that
does not exist and name the file they looked for. Credentials for a server or its S3 artifact store come only from
the environment, as MLflow and boto3 read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

from lic.errors import LicError

HEALTH_TIMEOUT_S = 5
PROJECT_MARKERS = ("params.yaml", "dvc.yaml")  # what the project root holds, as DVC's own root discovery
STORE_FILE = "mlflow.db"
SQLITE = "sqlite:///"
# Tags of every experiment lic writes to: MLflow 3's UI opens an experiment without a kind in its GenAI view
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the working directory) holding params.yaml or dvc.yaml."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if any((folder / marker).is_file() for marker in PROJECT_MARKERS):
            return folder
    return None


def tracking_uri(project: Path | None = None) -> str:
    """The store (rules in this module's docstring). `project`: the project root when the caller knows it
    (training resolves it once on the driver), else it is looked for above the working directory."""
    if is_tracking_uri_set():
        uri = mlflow.get_tracking_uri()
        if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
            return SQLITE + str(Path(uri.removeprefix(SQLITE)).resolve())
        return uri
    root = project or project_root()
    if root is None:
        raise LicError(
            "no MLflow store: MLFLOW_TRACKING_URI is not set and "
            f"{Path.cwd()} is not inside a LoC-LIC project (no {' or '.join(PROJECT_MARKERS)} here or above); "
            f"set MLFLOW_TRACKING_URI, e.g. to http://127.0.0.1:5000 or {SQLITE}/path/to/project/{STORE_FILE}"
        )
    return SQLITE + str(Path(root).resolve() / STORE_FILE)


def client(create: bool = False) -> MlflowClient:
    """A client of the store, which also becomes MLflow's current one, so that runs, model logging and `models:/`
    downloads in this process use the same store.

    `create`: whether a SQLite store that does not exist yet may be made (training and registration write);
    readers leave it False. A remote server is asked for /health first: unreachable, MLflow would retry every
    request with backoff for minutes.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
        except requests.RequestException as err:
            raise LicError(f"MLflow tracking server {uri} is unreachable ({type(err).__name__})") from None
    elif uri.startswith(SQLITE) and not create and not Path(uri.removeprefix(SQLITE)).is_file():
        raise LicError(
            f"no MLflow store at {uri.removeprefix(SQLITE)}: nothing was registered there "
            "(run `make pipeline` in the project, or set MLFLOW_TRACKING_URI to the store that holds the model)"
        )
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def is_not_found(err: MlflowException) -> bool:
    """Missing names, versions and aliases (a missing alias is INVALID_PARAMETER_VALUE "... not found")."""
    return err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in err.message.lower()


@contextmanager
def registry_errors(what: str) -> Iterator[None]:
    """MLflow errors about `what` (a model URI, a name) become LicErrors naming it and the store searched."""
    try:
        yield
    except MlflowException as err:
        reason = "not found" if is_not_found(err) else err.message.splitlines()[0]
        raise LicError(f"{what}: {reason} (MLflow store searched: {_store()})") from err


def _store() -> str:
    try:
        return tracking_uri()
    except LicError:
        return "none"
