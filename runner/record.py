"""A run's provenance record (the manifest) as the session opens and closes it, and the table a run ends with."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from runner import ui
from runner.engines.base import Job
from runner.errors import Interrupted, StepFailed
from runner.policy import mask_env
from runner.state import this_process
from runner.workflow import StepSpec, Workflow


def failed(status: str | None) -> bool:
    """A status that keeps what reads the step's output from running (skipped ones pass it on downstream)."""
    return status == "failed" or (status or "").startswith(("stopped", "skipped"))


def upstream_failed(name: str, deps: dict[str, set[str]], status: dict[str, str]) -> bool:
    """Whether a step upstream of `name` (its writers, theirs, ...) failed or was skipped."""
    todo, seen = list(deps[name]), set()
    while todo:
        d = todo.pop()
        if failed(status.get(d)):
            return True
        if d not in seen:
            seen.add(d)
            todo += deps.get(d, ())
    return False


def attempt(entry: dict[str, Any], out: Any, log: Path) -> None:
    """An attempt of a retried step joins its entry's list (`out`: its executor's Outcome)."""
    entry.setdefault("attempts", []).append({
        "attempt": len(entry["attempts"]) + 1, "status": out.status, "exit_code": out.exit_code,
        **({"reason": out.reason} if out.reason else {}), "start": entry.get("start"), "end": time.time(),
        "log": str(log), "usage": out.usage})


def opened(run_id: str, wf: Workflow, engine: str, executor: str, steps: list[StepSpec], opts: Any) -> dict[str, Any]:
    """A run's record as it starts (`opts`: its RunOptions: the mounts it allowed, its site profile)."""
    names = {s.name for s in steps}
    return {"run_id": run_id, "workflow": str(wf.path), "root": str(wf.root), "engine": engine, "executor": executor,
            "started": time.time(), **this_process(), "status": "running", "selected": [s.name for s in steps],
            "allowed_mounts": opts.allowed_mounts, **({"site": opts.site} if opts.site else {}),
            "dag": [list(e) for e in wf.edges() if {e[0], e[1]} <= names], "steps": {}}


def begun(job: Job, engine: str, executor: str, image_id: str | None, log: Path, attempts: list | None,
          why: str, picks: bool = False) -> dict[str, Any]:
    """A step's entry as it starts (its earlier attempts kept); `why` it runs (`reason`, once it failed, says why it
    failed). A sweep's own step that `picks` its best point in a job of its own (a detached run) runs no container."""
    if picks:
        return {"executor": executor, "start": time.time(), "status": "running", "log": str(log), "why": why}
    return {"image": job.image, "engine": engine, "executor": executor, "argv": job.argv, "user": job.user,
            "gpus": job.gpus, "env": mask_env(job.env), "mounts": job.to_dict()["mounts"],
            "limits": {k: v for k, v in dataclasses.asdict(job.limits).items() if v is not None},
            **({"image_id": image_id} if image_id else {}), "start": time.time(), "status": "running",
            "log": str(log), **({"attempts": attempts} if attempts else {}), "why": why}


def closed(manifest: dict[str, Any], steps: list[StepSpec], status: dict[str, str], exc: BaseException | None,
           cancelled: bool) -> None:
    """Every step's final status (never more than what happened) and the run's outcome (interrupted, failed,
    succeeded), from what ended it (`exc`, or nothing: it went well) and whether it was cancelled; a detached run
    (status submitted) stays open. `status` gains what the record says."""
    interrupted = isinstance(exc, (Interrupted, KeyboardInterrupt))
    outcome = "interrupted" if interrupted or cancelled else "failed" if exc is not None else "succeeded"
    error = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__) if (
        exc is not None and not interrupted and not isinstance(exc, StepFailed)) else None
    detached = manifest.get("status") == "submitted"
    for s in steps:
        entry = manifest["steps"].setdefault(s.name, {})
        if entry.get("status") in (None, "running"):
            now = status.get(s.name, "not run")
            entry["status"] = ("submitted" if detached and entry.get("status") else
                               "interrupted" if now == "running" else now)
        status.setdefault(s.name, entry["status"])
    if not detached:
        manifest["ended"] = time.time()
        manifest["status"] = outcome
        if error:
            manifest["error"] = error


def table(steps: list[StepSpec], status: dict[str, str]) -> None:
    width = max(len(s.name) for s in steps)
    for s in steps:
        st = status.get(s.name, "not run")
        style = "green" if st in ("done", "up to date") else "red" if st in ("failed", "interrupted") else "dim"
        ui.say(f"  {s.name:<{width}}  {st}", style)
