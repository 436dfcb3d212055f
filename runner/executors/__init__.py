"""Executors: where a run's steps execute. Each is one module with a thin backend class (submit / poll / cancel)
that the run session (runner.session) drives, found through the `itwin_run.executors` entry points (the built-in
ones are registered there too, in pyproject.toml). Its class also declares what it tells with no run in progress:
`status`, `outcomes` (a detached run's) and `doctor` (runner.executors.base.Executor)."""

from __future__ import annotations

from typing import Any

from runner import plugins
from runner.errors import UsageError, UserError
from runner.executors.base import Common, Executor, Outcome, Submission

GROUP = "itwin_run.executors"
# Where no installed metadata declares any (a source tree run without installing it): the built-in ones.
BUILT_IN = {"local": "runner.executors.local:LocalExecutor", "slurm": "runner.executors.slurm:SlurmExecutor",
            "cwl": "runner.executors.cwl:CwlExecutor"}


def available() -> dict[str, str]:
    """Executor name -> its class (`module:Class`), as the entry points say."""
    return plugins.declared(GROUP, BUILT_IN)


def executor_class(name: str) -> type[Executor]:
    """The class of the executor `name` (a record's; the local one where that is no longer installed)."""
    found = available()
    return plugins.load(found.get(name, found.get("local", BUILT_IN["local"])))


def get_executor(name: str, common: Common, settings: dict[str, Any] | None = None) -> Executor:
    """The executor `name` for a run, made from `common` and its own settings (field -> value)."""
    found = available()
    if name not in found:
        raise UsageError(f"--executor: choose one of {', '.join(found)}, not {name!r}")
    cls = plugins.load(found[name])
    return cls.create(common, cls.settings(**(settings or {})) if cls.settings else None)


def settings() -> dict[str, type]:
    """Executor name -> its settings dataclass, for those that have one (loads every executor's module)."""
    return {name: cls.settings for name, target in available().items()
            if (cls := plugins.load(target)).settings is not None}


__all__ = ["Common", "Executor", "Outcome", "Submission", "available", "executor_class", "get_executor", "settings"]


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
        outcomes = executor_class(m.get("executor", "local")).outcomes
        try:
            steps = outcomes(m) if outcomes else {}
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
    own = executor_class(m.get("executor", "local")).status
    if own:
        return own(root, m["run_id"])
    return [(name, info.get("handle", "-"), info.get("status", "?")) for name, info in m.get("steps", {}).items()]
