"""A point of an itwin-run sweep (itwin-run says so in ITWIN_RUN_SWEEP / ITWIN_RUN_POINT / ITWIN_RUN_BEST): every
point tracks into one store, the sweep's output dataset, as a child run of one parent run named after the step, and
the registered model's alias follows the best point."""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV_SWEEP, ENV_POINT, ENV_BEST = "ITWIN_RUN_SWEEP", "ITWIN_RUN_POINT", "ITWIN_RUN_BEST"
SWEEP_TAG, POINT_TAG, PARENT_TAG = "itwinai.sweep", "itwinai.point", "mlflow.parentRunId"
METRICS = "metrics.json"  # the point's metrics, beside its checkpoints: what itwin-run picks the best by


def current() -> tuple[str, str] | None:
    """(the sweep's step, this point) when this training is a point of a sweep."""
    sweep, point = os.environ.get(ENV_SWEEP), os.environ.get(ENV_POINT)
    return (sweep, point) if sweep and point else None


def store_dir(output_dir: str | None) -> str | None:
    """Where the embedded tracking store lives: the output dataset, or for a point the sweep's (its parent)."""
    if output_dir and current():
        return str(Path(output_dir).resolve().parent)
    return output_dir


@contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """One point at a time between finding the parent run and creating it, and while the alias moves."""
    with open(Path(folder, ".itwinai-sweep.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def locked_if_point(output_dir: str | None) -> Iterator[None]:
    if current():
        with locked(Path(output_dir or ".").resolve().parent):
            yield
    else:
        yield


def parent_run(client, experiment_id: str, sweep: str, key: str) -> str:
    """The sweep's parent run (tagged with `key`, the sweep's folder and step): found, or made once."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: key})
    client.set_terminated(run.info.run_id, "FINISHED")  # it holds its children; it trains nothing
    return run.info.run_id


def write_metrics(output_dir: str, metrics: dict[str, Any]) -> None:
    """The final metrics (the last logged value of each) as numbers, for whatever picks among trainings."""
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    Path(output_dir, METRICS).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def best_version(client, name: str, experiment_id: str, parent_id: str) -> str | None:
    """The model version of the sweep's best point: each point's latest finished run, ranked by ITWIN_RUN_BEST
    (METRIC:min|max); None when no point has that metric and a version."""
    metric, _, mode = os.environ.get(ENV_BEST, "val_loss:min").partition(":")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                            "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    latest: dict[str, Any] = {}
    for run in runs:
        latest.setdefault(run.data.tags.get(POINT_TAG, run.info.run_id), run)
    scored = [(run.data.metrics[metric], run) for run in latest.values() if metric in run.data.metrics]
    for _, run in sorted(scored, key=lambda x: x[0] if mode != "max" else -x[0]):
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        if versions:
            return str(max(int(v.version) for v in versions))
    return None


def follow_best(client, name: str, alias: str, run_id: str, folder: Path) -> None:
    """Move the alias to the sweep's best point's version (this run is one of its points)."""
    run = client.get_run(run_id)
    with locked(folder):
        version = best_version(client, name, run.info.experiment_id, run.data.tags[PARENT_TAG])
        if version:
            client.set_registered_model_alias(name, alias, version)
            print(f"itwinai: sweep: alias {alias!r} on version {version}, the best point so far", flush=True)
