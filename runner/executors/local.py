"""The local executor: steps run on this machine through the engine's StepRunner, up to --jobs at a time."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runner import ui
from runner.engines.base import Cancelled, Job, StepRunner, failure_reason
from runner.errors import UserError
from runner.executors.base import Common, Outcome, Submission
from runner.policy import mask_env, masker
from runner.workflow import StepSpec

TAIL_LINES = 20


def print_plan(subs: list[Submission], present: dict[str, bool]) -> None:
    """--dry-run: per step its image, argv, mounts, user and env (secrets masked)."""
    for sub in subs:
        job = sub.job
        print(f"step {job.step}")
        print(f"  image  {job.image} ({'present' if present[job.step] else 'to build'})")
        print(f"  argv   {json.dumps(job.argv)}")
        for m in job.mounts:
            print(f"  mount  {m.source} -> {m.target} ({'ro' if m.read_only else 'rw'})")
        print(f"  user   {job.user}" + (f"  gpus {job.gpus}" if job.gpus else ""))
        for k, v in mask_env(job.env).items():
            print(f"  env    {k}={v}")


class LocalExecutor:
    name = "local"
    settings = None
    orders_itself = False
    records_itself = False
    whole_workflow = False
    runs_as_caller = False
    single_file_images = False
    refuses_sweeps = ""
    arrays = False
    shares_cpus = True
    doctor = status = outcomes = None

    @classmethod
    def create(cls, common: Common, settings: None) -> LocalExecutor:
        return cls(common.runner, common.jobs)

    def __init__(self, runner: StepRunner, jobs: int = 1):
        self.runner, self.jobs = runner, max(1, jobs)
        self._done: queue.Queue[Outcome] = queue.Queue()
        self._out = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: ThreadPoolExecutor | None = None  # prepares the steps that run next, one at a time
        self._running: dict[str, list] = {}  # step -> [started (monotonic), its last output line]
        self._live: Any = None

    def check(self, opts, steps: list[StepSpec]) -> None:
        pass

    def dry_run(self, subs: list[Submission], present: dict[str, bool]) -> None:
        print_plan(subs, present)

    def start(self, run_id: str, run_dir: Path, labels: dict[str, str]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.runner.begin(labels)
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="step")
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        if not ui.plain() and sys.stdout.isatty():  # both on a terminal: a live line per running step below the output
            from rich.live import Live

            self._live = Live(get_renderable=self._progress, console=ui.console(), transient=True,
                              refresh_per_second=4, redirect_stdout=True, redirect_stderr=True)
            self._live.start()

    def _progress(self) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        with self._out:
            running = sorted(self._running.items(), key=lambda item: item[1][0])
        for step, (started, last) in running:
            table.add_row(f"[cyan]▶ {step}[/]", f"{now - started:5.0f}s", f"[dim]{last[:100]}[/]")
        return table

    def has_room(self, active: int) -> bool:
        return active < self.jobs

    def detached(self, active: dict[str, Submission]) -> bool:
        return False

    def submit(self, sub: Submission) -> str:
        assert self._pool is not None
        self._pool.submit(self._run, sub)
        return sub.step.name

    def prepare(self, job: Job) -> None:
        """A step that runs once running ones end: its engine makes its container now (off the session's loop)."""
        make = getattr(self.runner, "prepare", None)  # an engine may not have it (runner.engines.base.StepRunner)
        if make is not None and self._ahead is not None:
            self._ahead.submit(make, job)

    def _run(self, sub: Submission) -> None:
        job = sub.job
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        prefix = f"{job.step} | "
        hide = masker(job.env)
        clean = ui.strip_escapes if ui.plain() else (lambda line: line)  # a step's colours, only on a terminal
        try:
            with open(sub.log, "w", encoding="utf-8") as log:
                def on_line(line: str) -> None:
                    line = clean(hide(line))
                    tail.append(line)
                    log.write(line + "\n")
                    with self._out:
                        self._running[job.step][1] = line
                        sys.stdout.write(prefix + line + "\n")
                        sys.stdout.flush()
                with self._out:
                    self._running[job.step] = [time.monotonic(), ""]
                code = self.runner.run(job, on_line)
            out = Outcome(job.step, "done" if code == 0 else "failed", exit_code=code, tail=list(tail),
                          reason=failure_reason(self.runner, job, code, list(tail)) if code else "")
        except Cancelled:
            out = Outcome(job.step, "interrupted", reason="cancelled before it started")
        except UserError as exc:
            out = Outcome(job.step, "failed", reason=str(exc), tail=list(tail))
        except Exception as exc:  # the daemon lost, say: the step failed, and the run says so
            out = Outcome(job.step, "failed", reason=f"step {job.step!r}: {type(exc).__name__}: {exc}", tail=list(tail))
        with self._out:
            self._running.pop(job.step, None)
        if self._live is not None:  # its line goes now, not at the next refresh
            self._live.refresh()
        out.ended = time.monotonic()
        out.usage = dict(job.usage)
        self._done.put(out)

    def poll(self, active: dict[str, Submission], timeout: float) -> list[Outcome]:
        outs = []
        try:
            outs.append(self._done.get(timeout=timeout))
            while True:
                outs.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return outs

    def cancel(self, active: dict[str, Submission], force: bool, interrupted: bool = True) -> None:
        threading.Thread(target=self.runner.interrupt, args=(force,), daemon=True).start()

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.runner.end()
