"""An in-process fake engine for the fast tier: the run session's semantics in seconds, no daemon. Never used by a
test that claims an engine works: those run against the real one."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runner.engines.base import Cancelled, Job
from runner.errors import UserError


class FakeBuilder:
    name = "fake"

    def __init__(self, on_resolve: Callable[[str], None] | None = None):
        self.on_resolve = on_resolve
        self.resolved: list[str] = []

    def identity(self, ref: str) -> str | None:
        return None

    def resolve(self, spec, opts, *, build: bool = True) -> tuple[str, bool]:
        if self.on_resolve:
            self.on_resolve(spec.step)
        self.resolved.append(spec.step)
        return f"fake/{spec.name}", True


class FakeRunner:
    """Each step's behaviour comes from `plan[step]`: a callable(job) -> exit code, run in the step's thread. It can
    wait on `self.stopped` (set by interrupt) to stand for a container that stops on SIGTERM. A step that ends well
writes STEP.out into its output, unless `writes` is False."""

    name = "fake"
    cwltool_args: list[str] = []
    cwl_output_at_dataset = True

    def __init__(self, plan: dict[str, Callable[[Job], int]] | None = None, writes: bool = True):
        self.plan, self.writes = plan or {}, writes
        self.started: list[str] = []  # containers created
        self.events: list[tuple[float, str, str]] = []
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self.refused_after_cancel: list[str] = []
        self.prepared: dict[str, Job] = {}  # what prepare() was given, by step
        self.ran: dict[str, Job] = {}  # what run() was given, by step

    def prepare(self, job: Job) -> None:
        self.events.append((time.monotonic(), "prepare", job.step))
        self.prepared[job.step] = job

    def default_user(self, root: Path) -> str:
        return f"{os.getuid()}:{os.getgid()}"

    def begin(self, labels):
        pass

    def end(self):
        pass

    def clean(self, over) -> None:
        self.over = over  # the session's judge of which earlier runs are over

    def explain(self, job, code, tail) -> str:
        return ""

    def interrupt(self, force: bool) -> None:
        with self._lock:
            self.stopped.set()

    def run(self, job: Job, on_line) -> int:
        with self._lock:
            if self.stopped.is_set():
                self.refused_after_cancel.append(job.step)
                raise Cancelled(job.step)
            self.started.append(job.step)
            self.ran[job.step] = job
        self.events.append((time.monotonic(), "start", job.step))
        on_line(f"running {job.step}")
        try:
            action = self.plan.get(job.step)
            code = action(job) if action else 0
            if code == 0 and self.writes and "--output" in job.argv:  # what a step that ends well leaves
                out = Path(job.argv[job.argv.index("--output") + 1])
                if out.is_dir():
                    (out / f"{job.step}.out").write_text(job.step)
        finally:
            self.events.append((time.monotonic(), "end", job.step))
        return code


def engine_error(job: Job) -> int:
    raise UserError(f"step {job.step!r} asks for GPUs (all) but this Docker daemon has no NVIDIA runtime")


def sleeps(seconds: float) -> Callable[[Job], int]:
    def act(job: Job) -> int:
        time.sleep(seconds)
        return 0
    return act


def fails(code: int) -> Callable[[Job], int]:
    return lambda job: code
