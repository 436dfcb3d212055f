"""Where runs are tracked: an embedded sqlite store inside the output dataset, or a real MLflow server."""

from __future__ import annotations

import os
from pathlib import Path

from itwinai.config import ItwinaiError

DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"


def tracking_uri(explicit: str | None, store_dir: str | Path | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///<store_dir>/mlflow.db."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return normalise(uri)
    if store_dir is None:
        raise ItwinaiError("no tracking store: give --output (the embedded store lives there), "
                           "--tracking-uri or MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(store_dir).resolve() / DB_NAME}"


def is_file_store(path: Path) -> bool:
    """An MLflow file store (what the 2023 tool wrote): experiment folders holding meta.yaml."""
    return path.is_dir() and not (path / DB_NAME).exists() and any(path.glob("*/meta.yaml"))


def normalise(uri: str, reading: bool = False) -> str:
    """The prototype wrote `file:./data/mnist/ml-logs`: that directory now holds the embedded sqlite store. When
    reading (`itwinai predict`) a directory that holds an MLflow file store, the file store is read as it is: MLflow 3
    allows that only on request (MLFLOW_ALLOW_FILE_STORE), and itwinai never writes into it."""
    if uri.startswith(("sqlite:", "http:", "https:", "databricks", "postgresql", "mysql")):
        return uri
    path = Path(uri.removeprefix("file://").removeprefix("file:"))
    if reading and is_file_store(path):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        return path.resolve().as_uri()
    return f"sqlite:///{path.resolve() / DB_NAME}" if path.suffix != ".db" else f"sqlite:///{path.resolve()}"


def artifact_location(uri: str) -> str | None:
    """Artifacts beside an embedded sqlite store (same absolute path on the host and in containers)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent.joinpath(ARTIFACTS).as_uri()
    return None


def ensure_experiment(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(uri))
