"""Executors: where a run's steps execute. Each module here is one thin backend (submit / poll / cancel) that the
run session (runner.session) drives; adding one is adding a module and its name below."""

from __future__ import annotations

import importlib

from runner.errors import UsageError, UserError
from runner.executors.base import Executor, Outcome, Submission

EXECUTORS = {"local": ("runner.executors.local", "LocalExecutor"),
             "slurm": ("runner.executors.slurm", "SlurmExecutor"),
             "cwl": ("runner.executors.cwl", "CwlExecutor")}


def get_executor(name: str, **options: object) -> Executor:
    if name not in EXECUTORS:
        raise UsageError(f"--executor: choose one of {', '.join(EXECUTORS)}, not {name!r}")
    module, cls = EXECUTORS[name]
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["Executor", "Outcome", "Submission", "get_executor", "EXECUTORS"]


def follow_detached(root) -> list[str]:
    """Detached runs of the project whose jobs are still queued or running. Those whose jobs all ended get their
    true outcome in their record first (history then shows it)."""
    from runner import ui
    from runner.state import State

    state = State(root)
    live = []
    for run_id in state.detached():
        try:
            m = state.manifest(run_id)
        except UserError:  # its record is gone
            state.drop_detached(run_id)
            continue
        module = importlib.import_module(EXECUTORS.get(m.get("executor", "local"), EXECUTORS["local"])[0])
        try:
            steps = module.outcomes(m) if hasattr(module, "outcomes") else {}
        except UserError as exc:
            ui.say(f"note: run {run_id} was detached and its jobs cannot be checked here ({exc})", "yellow")
            live.append(run_id)
            continue
        if steps is None:
            live.append(run_id)
        else:
            state.settle_detached(run_id, steps)
    return live


def status(root, run_id: str | None) -> list[tuple[str, str, str]]:
    """(step, handle, state) of a run's steps (the latest run's when `run_id` is None): the executor's own view
    where it has one (SLURM), else the record."""
    from runner.state import State

    m = State(root).manifest(run_id)
    module = importlib.import_module(EXECUTORS.get(m.get("executor", "local"), EXECUTORS["local"])[0])
    if hasattr(module, "status"):
        return module.status(root, m["run_id"])
    return [(name, info.get("handle", "-"), info.get("status", "?")) for name, info in m.get("steps", {}).items()]
