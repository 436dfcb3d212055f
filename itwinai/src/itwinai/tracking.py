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


def normalise(uri: str) -> str:
    """The prototype wrote `file:./data/mnist/ml-logs`: a directory now holds the sqlite store."""
    if uri.startswith(("sqlite:", "http:", "https:", "databricks", "postgresql", "mysql")):
        return uri
    path = Path(uri.removeprefix("file://").removeprefix("file:"))
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
