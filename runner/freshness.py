"""Whether a step's record still holds: what its fingerprint is made of (image, engine, argv, env, user, GPUs, the
project files it may read) and, when the record does not match, why the step runs again."""

from __future__ import annotations

import graphlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.engines.base import Job
from runner.executors.base import Submission
from runner.limits import THREAD_VARS
from runner.state import ProjectFiles, State, fingerprint, step_fingerprint, why
from runner.workflow import StepSpec, Workflow, dependencies


class Freshness:
    def __init__(self, wf: Workflow, state: State):
        self.wf, self.state = wf, state
        self.why: dict[str, str] = {}  # why each step that runs does (state.why)
        self._files: ProjectFiles | None = None
        self._named: dict[str, set[str]] = {}  # step -> project files its command names

    def parts(self, step: StepSpec, job: Job, engine: str) -> dict[str, Any]:
        """What a step's fingerprint is made of, but its inputs (taken when it is checked or done)."""
        if self._files is None:
            env_files = [s.env_file for s in self.wf.steps if s.env_file]  # in the image hash already
            self._files = ProjectFiles(self.wf.root, self.state, [*self.wf.datasets.values(), *env_files])
        files = self._files.read_by(step.depends, self._named_by_others(step))
        env = {k: v for k, v in job.env.items() if k not in THREAD_VARS or k in step.env.vars}  # not a share
        return {"image": job.image, "engine": engine, "argv": job.argv, "env": env, "user": job.user,
                "gpus": job.gpus, "project": fingerprint(files=files), "files": files}

    def _named_by_others(self, step: StepSpec) -> set[str]:
        """Project files other steps' commands name and this one's does not: editing another step's script reruns
        that step (and what reads its output), not this one."""
        if not self._named:
            for s in self.wf.steps:
                files = set()
                for token in self.wf.argv(s):
                    path = (self.wf.root / token).resolve()
                    if self.wf.root in path.parents and path.is_file():
                        files.add(str(path.relative_to(self.wf.root)))
                self._named[s.name] = files
        return set().union(*(f for name, f in self._named.items() if name != step.name)) - self._named[step.name]

    def holds(self, sub: Submission, force: list[str] | None, status: dict[str, str]) -> bool:
        """Whether the step's record matches (`force`: steps to rerun whatever; [] all); if not, why it runs is
        kept in `why` for its record (`reason`). `status`: this run's steps so far (an upstream that reran)."""
        if force is not None and (not force or sub.step.name in force or sub.step.parent in force):
            self.why[sub.step.name] = "--force"
            return False
        if self.state.up_to_date(sub.key, step_fingerprint(sub.parts, sub.inputs),
                                 Path(sub.output) if sub.output else None):
            return True
        reason = why(self.state.record(sub.key), sub.parts, sub.inputs)
        ran = sorted(u for u in dependencies(self.wf)[sub.step.name] if status.get(u) == "done")
        self.why[sub.step.name] = f"upstream reran: {', '.join(ran)}" if ran and reason.startswith("input") else reason
        return False

    def plan(self, steps: list[StepSpec], images: dict[str, tuple[str, bool]],
             submission: Callable[[StepSpec, str], Submission], holds: Callable[[Submission], bool]) -> list[str]:
        """The dry run's first lines: each step, `run (why)` or `up to date`, its writers first."""
        deps = dependencies(self.wf)
        runs: set[str] = set()
        names = {s.name for s in steps}
        order = list(graphlib.TopologicalSorter({s.name: deps[s.name] & names for s in steps}).static_order())
        lines = []
        for step in sorted(steps, key=lambda s: order.index(s.name)):
            ref, present = images[step.name]
            if step.sweep:  # no container: it picks the best of its points
                if deps[step.name] & runs:
                    runs.add(step.name)
                lines.append(f"{step.name}: the best of its {len(step.points)} points by {step.sweep.best.metric} "
                             f"({step.sweep.best.mode}), linked as {self.wf.output_dir(step)}/best")
                continue
            if not present:
                reason: str | None = "its image is to be built"
            elif holds(submission(step, ref)):
                reason = "upstream would run" if deps[step.name] & runs else None
            else:
                reason = self.why[step.name]
            if reason:
                runs.add(step.name)
            lines.append(f"{step.name}: " + (f"run ({reason})" if reason else "up to date"))
        return lines
