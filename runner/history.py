"""`history`, `show` and `status`: the runs recorded in a project, as a table, one run's manifest, and the state of
each of its steps as its executor knows it now."""

from __future__ import annotations

import json
from pathlib import Path

from runner import ui


def table(where: Path) -> None:
    """Print the runs recorded in `where`, oldest first."""
    from runner.executors import follow_detached
    from runner.state import State

    follow_detached(where)  # a detached run whose jobs ended shows how they ended
    runs = sorted(State(where).manifests(), key=lambda m: m.get("started", 0))
    if not runs:
        ui.say(f"no runs yet in {where}")
        return
    print(f"{'RUN':<22}  {'STARTED':<19}  {'STATUS':<11}  {'ENGINE':<9}  {'EXECUTOR':<8}  WORKFLOW  (STEPS)")
    for m in runs:
        counts: dict[str, int] = {}
        for info in m.get("steps", {}).values():
            counts[info.get("status", "?")] = counts.get(info.get("status", "?"), 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        error = f"  {m['error']}" if m.get("error") else ""
        print(f"{m['run_id']:<22}  {when(m.get('started'), 'seconds').replace('T', ' ')[:19]}  "
              f"{m.get('status', '?'):<11}  {m.get('engine', '?'):<9}  {m.get('executor', 'local'):<8}  "
              f"{Path(m.get('workflow', '?')).name}  ({summary}){error}")


def when(stamp: float | None, spec: str = "milliseconds") -> str:
    """A manifest's time (seconds since the epoch) in ISO 8601, local time with its offset."""
    from datetime import datetime

    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec=spec) if stamp else "-"


def show(where: Path, run_id: str) -> None:
    """Print one run's manifest (JSON), its times in ISO 8601."""
    from runner.state import State

    m = State(where).manifest(run_id)
    for key in ("started", "ended"):
        if key in m:
            m[key] = when(m[key])
    for info in m.get("steps", {}).values():
        for key in ("start", "end"):
            if key in info:
                info[key] = when(info[key])
    print(json.dumps(m, indent=2))


def status(where: Path, run_id: str | None) -> None:
    """Print each step of a run (default: the latest), its handle and its state now (SLURM: squeue, then sacct)."""
    from runner.executors import follow_detached
    from runner.executors import status as states

    follow_detached(where)
    for name, handle, state in states(where, run_id):
        print(f"{name}\t{handle}\t{state}")
