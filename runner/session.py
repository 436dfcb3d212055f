"""A run's whole lifecycle, for every executor: the project lock, step selection, images, fingerprints and step
records, the provenance manifest, one run-wide cancel flag, signal handling and the status table.

Executors (runner/executors/: local, slurm, cwl) only submit, poll and cancel; engines (runner/engines/) only
build images and run one container. Reading this file top to bottom is reading what `itwin-run WORKFLOW` does."""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

from runner import plan, record, ui
from runner.engines.base import ImageBuilder, Job, StepRunner
from runner.errors import ENDING_SIGNALS, Interrupted, StepFailed, UsageError, UserError
from runner.executors import follow_detached
from runner.executors.base import Executor, Loop, Outcome, RunOptions, Submission
from runner.freshness import Freshness
from runner.images import LABEL
from runner.inventory import remember
from runner.plan import check_access, check_inputs, cpu_share, job_for, prepare_output, resolve_images, select, wrote_nothing
from runner.record import failed, upstream_failed
from runner.state import State, complete_step
from runner.study import Studies
from runner.sweep import settle
from runner.workflow import StepSpec, Workflow, dependencies

GRACE = 5.0  # seconds a cancelled step has to stop before it is killed


# ---------------------------------------------------------------- the session


class RunSession:
    """One run: `RunSession(...).run()`; raises StepFailed, UserError or Interrupted as the CLI reports them."""

    def __init__(self, wf: Workflow, builder: ImageBuilder, runner: StepRunner, executor: Executor, opts: RunOptions):
        self.wf, self.builder, self.runner, self.executor, self.opts = wf, builder, runner, executor, opts
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.state = State(wf.root)
        self.run_dir = self.state.runs / self.run_id
        self.user = opts.user or (f"{os.getuid()}:{os.getgid()}" if executor.runs_as_caller else runner.default_user(wf.root))
        self.status: dict[str, str] = {}
        self.manifest: dict[str, Any] = {}
        self.cancel_code = 0  # 128 + the signal once cancelled
        self._cancelled_at: float | None = None
        self._phase = "prepare"
        self._deps: dict[str, set[str]] = {}
        self._written = 0.0  # when the manifest was last written
        self._unwritten = False  # a step started since
        self._image_ids: dict[str, str | None] = {}
        self._share: int | None = None  # the threads of a step beside others (plan.cpu_share)
        self._prepared: set[str] = set()  # steps handed to executor.prepare
        self.freshness = Freshness(wf, self.state)
        self.studies = Studies(wf, self.state.dir / "studies")
        self.build_opts = dataclasses.replace(opts.build, single_file=executor.single_file_images)

    # ------------------------------------------------------------ the run

    def run(self) -> None:
        steps = select(self.wf, self.opts)
        self._share = cpu_share(steps, dependencies(self.wf), self.opts.jobs) if self.executor.shares_cpus else None
        self.executor.check(self.opts, steps)  # flags this executor cannot honour: refused before anything starts
        sweep = next((s for s in steps if s.sweep), None)
        if sweep and self.executor.refuses_sweeps:
            raise UsageError(f"{self.wf.path}:{sweep.at}: {sweep.name}.sweep: not yet {self.executor.refuses_sweeps}")
        if os.getuid() == 0 and not self.opts.user and not self.user.startswith("0:"):
            ui.say(f"note: steps run as uid:gid {self.user}, not root (you are root; --user 0:0 runs them as root)", "dim")
        if any(s.env.prefix for s in steps):
            ui.say("note: env.prefix (the prototype's conda location) is ignored: steps run in container images", "dim")
        check_inputs(self.wf, steps)  # what a run refuses is refused before anything starts, in a dry run too
        check_access(self.wf, steps, self.user)
        if self.opts.dry_run:
            return self._dry_run(steps)
        self.state.lock(self.run_id)
        remember(self.wf.root)  # `prune` elsewhere keeps what this project's records name
        previous = self._install_signals()
        try:
            live = follow_detached(self.wf.root)
            if live:  # never a second writer beside a job that still runs
                raise UserError(f"run {live[0]} (detached) still has jobs queued or running on {self.wf.root}: follow it with "
                                f"`itwin-run status {live[0]}`, or scancel its jobs, and run again once they end")
            self._start_manifest(steps)
            try:
                self._phase = "images"
                sub = Workflow(path=self.wf.path, root=self.wf.root, datasets=self.wf.datasets, steps=steps, extra=self.wf.extra)
                images = {k: ref for k, (ref, _) in resolve_images(sub, self.builder, self.build_opts,
                                                                   pinned=self.opts.pinned).items()}
                self._image_ids = {ref: self.builder.identity(ref) for ref in set(images.values())}
                self.runner.clean(self.state.over)  # before any step: no container of a dead run writes beside it
                self._phase = "steps"
                if self.cancel_code:
                    raise Interrupted(self.cancel_code)
                self._schedule(steps, images)
            except BaseException as exc:
                self._end_manifest(steps, exc)
                raise
            self._end_manifest(steps, None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.state.unlock()

    def _dry_run(self, steps: list[StepSpec]) -> None:
        images = resolve_images(self.wf, self.builder, self.build_opts, build=False, pinned=self.opts.pinned)
        subs = [self._submission(s, images[s.name][0], [], fingerprinted=False) for s in steps if not s.sweep]
        for line in self.freshness.plan(steps, images, lambda step, ref: self._submission(step, ref, []),
                                        lambda sub: self._up_to_date(sub)):
            print(line)
        self.executor.dry_run(subs, {k: present for k, (_, present) in images.items()})

    # ------------------------------------------------------------ signals: one flag for the whole run

    def _install_signals(self) -> dict[int, Any]:
        main = threading.current_thread() is threading.main_thread()
        return {sig: signal.signal(sig, self._on_signal) for sig in ENDING_SIGNALS} if main else {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = not self.cancel_code
        self.cancel_code = self.cancel_code or 128 + signum
        if signum == signal.SIGHUP:
            ui.hung_up()  # the terminal is gone: what is left to say goes nowhere rather than failing
        if first:
            self._cancelled_at = time.monotonic()
        if self._phase != "steps":
            # building or converting an image: stop it now (the build's own process goes with the exception)
            raise Interrupted(self.cancel_code)
        if not first and signum == signal.SIGINT:
            self._cancelled_at = -GRACE  # a second Ctrl-C: kill at once

    # ------------------------------------------------------------ scheduling

    def _job(self, step: StepSpec, image: str) -> Job:
        limits = dataclasses.replace(step.limits, cpus=self.opts.cpus or step.limits.cpus,
                                     memory=self.opts.memory or step.limits.memory)
        return job_for(self.wf, step, image, self.user, self.opts.gpus, self.run_id, limits, self.opts.binds, self._share)

    def _submission(self, step: StepSpec, image: str, after: list[str], fingerprinted: bool = True) -> Submission:
        step = self.studies.trial(step, self.status, ask=not self.opts.dry_run)  # an adaptive sweep's: its values
        job = self._job(step, image)
        output = self.wf.output_dir(step)
        return Submission(step=step, job=job, key=State.record_key(self.wf.root, self.wf.path, step.name),
                          parts=self.freshness.parts(step, job, self.runner.name) if fingerprinted else {},
                          inputs={d: str(self.wf.datasets[d]) for d in step.inputs},
                          output=str(output) if output else None, log=self.run_dir / f"{step.name}.log", after=after)

    def _up_to_date(self, sub: Submission) -> bool:
        return self.freshness.holds(sub, self.opts.force, self.status)

    def _schedule(self, steps: list[StepSpec], images: dict[str, str]) -> None:
        deps, names = dependencies(self.wf), {x.name for x in steps}
        self._deps = {s.name: deps[s.name] & names for s in steps}
        loop = Loop(list(steps))
        self.executor.start(self.run_id, self.run_dir, {f"{LABEL}.run": self.run_id})
        if self.executor.whole_workflow:  # all or nothing: up to date only when every step is
            subs = [self._submission(s, images[s.name], []) for s in steps if not s.sweep]  # a sweep: its points
            fresh = [self._up_to_date(sub) for sub in subs]
            for sub in (sub for sub, ok in zip(subs, fresh, strict=True) if ok):
                self.freshness.why[sub.step.name] = "its workflow runs whole (cwltool)"
            if all(fresh):
                for sub in subs:
                    self._finish(sub.step.name, "up to date")
                loop.pending = [s for s in steps if s.sweep]  # each picks its best again (no container)
        try:
            while loop.pending or loop.active:
                if not self.cancel_code and not loop.stopping:
                    self._start_ready(loop, images)
                    if self.executor.detached(loop.active):
                        self.manifest["status"] = "submitted"
                        loop.active = {}  # they run on without us
                        return
                if self.cancel_code or loop.stopping:
                    for step in loop.pending:
                        self._finish(step.name, "skipped: upstream failed" if upstream_failed(
                            step.name, self._deps, self.status) else "not run")
                    loop.pending = []
                if loop.active:
                    self._flush()
                    self._collect(loop)
                    if self._stop(loop):
                        break
        finally:
            if loop.active:  # an error of ours (not of a step): leave nothing running behind
                self.executor.cancel(loop.active, force=True, interrupted=True)
            self.executor.close()
        if self.cancel_code:
            raise Interrupted(self.cancel_code)
        if loop.failure:
            raise StepFailed(loop.failure.step, loop.failure.exit_code or 1, loop.failure.tail,
                             str(self.run_dir / f"{loop.failure.step}.log"), reason=loop.failure.reason)

    def _start_ready(self, loop: Loop, images: dict[str, str]) -> None:
        """Submit each step whose inputs are ready (or submitted, where the executor orders steps); settle the rest."""
        deps, whole, arrays = self._deps, self.executor.whole_workflow, self.executor.arrays
        points: dict[str, list[Submission]] = {}  # a sweep's points, for an executor that submits them as one array
        for step in list(loop.pending):
            if not self.executor.has_room(len(loop.active)):
                break
            if step.sweep and whole and all(u in loop.handles for u in deps[step.name]):  # the CWL step: its scatter
                loop.handles.setdefault(step.name, step.name)
            # once every point has ended, the best of them goes on; where the session leaves, a job picks it
            if step.sweep and not (any(u in loop.active for u in deps[step.name]) and self.executor.detached(loop.active)):
                if all(self.status.get(u) not in (None, "running") for u in deps[step.name]):
                    loop.pending.remove(step)
                    joined = self._join(step)  # always: with --keep-going a point may have failed
                    loop.failure = loop.failure or joined
                continue
            if any(failed(self.status.get(u)) for u in deps[step.name]):
                loop.pending.remove(step)
                self._finish(step.name, "skipped: upstream failed")
                continue
            if step.parent and not arrays and plan.at_parallel_limit(self.wf, step.parent, [a.step for a in loop.active.values()]):
                continue
            waiting = sorted(u for u in deps[step.name] if self.status.get(u) not in ("done", "up to date"))
            if any(self.status.get(u) in (None, "running") for u in step.after):  # a trial: the wave before has not ended
                continue
            if waiting and not (self.executor.orders_itself and all(u in loop.handles for u in waiting)):
                continue
            loop.pending.remove(step)
            sub = self._submission(step, images[step.name], [loop.handles[u] for u in waiting])
            if not waiting and not whole and self._up_to_date(sub):  # made_by: the run that made its output
                self._finish(step.name, "up to date", made_by=(self.state.record(sub.key) or {}).get("run"))
                continue
            if arrays and step.parent:
                points.setdefault(step.parent, []).append(sub)
                continue
            self._begin_step(sub)
            self._track(loop, sub, self.executor.submit(sub))
        for sweep, subs in points.items():
            for sub in subs:
                self._begin_step(sub)
            handles = self.executor.submit_array(subs, self.wf.step(sweep).sweep.parallel)  # type: ignore[union-attr]
            for sub, handle in zip(subs, handles, strict=True):
                self._track(loop, sub, handle)
        if points:  # what waits on them (with their handles now)
            self._start_ready(loop, images)
        if self.executor.prepare and not self.cancel_code:  # next in line: made ready while the running steps run
            for step in plan.next_in_line(loop.pending, deps, self.status, self.opts.jobs, self._prepared):
                self._prepared.add(step.name)
                self.executor.prepare(self._job(step, images[step.name]))

    def _track(self, loop: Loop, sub: Submission, handle: str) -> None:
        loop.handles[sub.step.name] = handle
        self.manifest["steps"][sub.step.name]["handle"] = handle
        loop.active[sub.step.name] = sub
        self.status[sub.step.name] = "running"

    def _collect(self, loop: Loop) -> None:
        """The outcomes of steps that ended (a failed one with retries left runs again); after a failure without
        --keep-going, the running steps are stopped."""
        for out in self.executor.poll(loop.active, timeout=0.2):
            sub = loop.active.pop(out.step)
            empty = wrote_nothing(sub.step, sub.output) if out.status == "done" else ""
            out = dataclasses.replace(out, status="failed", reason=empty) if empty else out
            again = self._retry(sub, out, loop.stopping)
            if again:
                loop.handles[out.step] = self.executor.submit(again)
                loop.active[out.step] = again
                continue
            failure = self._outcome(sub, out, loop.stopping)
            loop.failure = loop.failure or failure  # the run ends with the first (later ones are said as they come)
        if loop.failure and not self.opts.keep_going and not loop.stopping:
            loop.stopping = True
            if loop.active:
                ui.say(f"stopping the running steps: {loop.failure.step} failed (--keep-going lets them finish)", "yellow")
                self.executor.cancel(loop.active, force=False, interrupted=False)

    def _stop(self, loop: Loop) -> bool:
        """After an interrupt: stop the running steps, kill them after GRACE; True when they go on without us."""
        if not (self.cancel_code and loop.active):
            return False
        if not loop.cancel_sent:
            loop.cancel_sent = True
            ui.say("interrupted: stopping running steps (Ctrl-C again to kill them now)", "yellow")
            self.executor.cancel(loop.active, force=False, interrupted=True)
        elif not loop.kill_sent and time.monotonic() - (self._cancelled_at or 0) >= GRACE:
            loop.kill_sent = True
            self.executor.cancel(loop.active, force=True, interrupted=True)
        if self.executor.detached(loop.active):  # SLURM: the jobs go on without us
            self.manifest["status"] = "submitted"
            loop.active = {}
            return True
        return False

    def _join(self, step: StepSpec) -> Outcome | None:
        """A sweep's own step: the best of its points that ended well, linked as OUTPUT/best (no container); its
        log is the table of points. Returns the outcome when no point has the metric."""
        states = {p.slug: self.status.get(f"{step.name}.{p.slug}") for p in step.points}
        output = self.wf.output_dir(step)
        if self.cancel_code or not output or not step.sweep:
            return self._finish(step.name, "not run")
        if not any(st in ("done", "up to date") for st in states.values()):
            return self._finish(step.name, "skipped: upstream failed")
        start = time.time()
        status, info, lines = settle(output, self.studies.points(step, self.status), step.sweep.best, states)
        log = self.run_dir / f"{step.name}.log"
        log.write_text("\n".join(lines) + "\n")
        self._finish(step.name, status, start=start, end=time.time(), log=str(log), **info)
        if status == "failed":
            return Outcome(step.name, "failed", reason=f"sweep {step.name}: {info['reason']}", tail=lines[-5:])
        if status == "done":
            ui.say(f" {step.name}: {lines[-1]}", "green", prefix="✓")
        return None

    def _retry(self, sub: Submission, out: Outcome, stopping: bool) -> Submission | None:
        """A failed attempt of a step with retries left: keep its log and record, and the submission to run again.
        Never after an interrupt, nor once another step's failure is stopping the run."""
        name = sub.step.name
        retries = self.opts.retries if self.opts.retries is not None else sub.step.retries
        attempt = len(self.manifest["steps"][name].get("attempts", [])) + 1
        if out.status != "failed" or self.cancel_code or stopping or attempt > retries:
            return None
        kept = sub.log.with_name(f"{name}.attempt{attempt}.log")
        if sub.log.exists():
            sub.log.rename(kept)
        record.attempt(self.manifest["steps"][name], out, kept)
        ui.say(f" {name}: attempt {attempt} of {retries + 1} failed ({out.reason or f'exit code {out.exit_code}'}); "
               "running it again", "yellow", prefix="!")
        again = dataclasses.replace(sub, job=dataclasses.replace(sub.job, usage={}), after=[])
        self._begin_step(again)
        return again

    def _begin_step(self, sub: Submission) -> None:
        job = sub.job
        if sub.step.point and sub.step.output:  # a point writes beside the others (one tracking store for all)
            prepare_output(self.wf.datasets[sub.step.output], job.user)
        if sub.output:
            prepare_output(Path(sub.output), job.user)
        self.state.forget(sub.key)  # the output is not complete until this step says so again
        attempts = self.manifest["steps"].get(job.step, {}).get("attempts")
        self.manifest["steps"][job.step] = record.begun(
            job, self.runner.name, self.executor.name, self._image_ids.get(job.image), sub.log, attempts,
            self.freshness.why.get(job.step) or "upstream reran", picks=sub.step.sweep is not None)
        if not attempts:
            ui.say(f" {job.step}: {self.manifest['steps'][job.step]['why']}", "dim", prefix="run")
        self._unwritten = True
        self._flush()

    def _flush(self) -> None:
        """What runs now, on disk within a second, at most once a second (a killed runner's record says so)."""
        if self._unwritten and time.monotonic() - self._written >= 1.0:
            self.state.write_manifest(self.run_id, self.manifest)
            self._written, self._unwritten = time.monotonic(), False

    def _outcome(self, sub: Submission, out: Outcome, stopping: bool) -> Outcome | None:
        """Record what happened to a step; returns the outcome when it is a failure of the step itself."""
        name = sub.step.name
        info: dict[str, Any] = {"end": time.time(), "exit_code": out.exit_code, "usage": out.usage}
        if self.manifest["steps"][name].get("attempts"):  # it was retried: the last attempt joins the list
            record.attempt(self.manifest["steps"][name], out, sub.log)
        cancelled = self.cancel_code and (self._cancelled_at is None or out.ended >= self._cancelled_at)
        if out.status == "done" and not cancelled:
            if not self.executor.records_itself:
                complete_step(self.wf.root, sub.key, sub.parts, sub.inputs, sub.output, self.run_id)
            info["fingerprint"] = (self.state.record(sub.key) or {}).get("fingerprint")
            self._finish(name, "done", **info)
            ui.say(f" {name} ({info['end'] - self.manifest['steps'][name]['start']:.1f}s)", "green", prefix="✓")
            return None
        if out.status == "cancelled" and upstream_failed(name, self._deps, self.status):
            self._finish(name, "skipped: upstream failed", **info)
            return None
        if cancelled:
            self._finish(name, "interrupted", **info)
            return None
        if stopping:
            self._finish(name, "stopped: another step failed", **info)
            return None
        first = "failed" not in self.status.values()
        self._finish(name, "failed", **info, **({"reason": out.reason} if out.reason else {}))
        if out.reason and not first:  # the first failure is what the run ends with, and the CLI says it
            ui.say(f" {out.reason}", "red", prefix="error:")
        return out

    def _finish(self, name: str, status: str, **info: Any) -> None:
        self.status[name] = status
        self.manifest["steps"].setdefault(name, {}).update(status=status, **info)
        if status in ("up to date", "skipped: upstream failed", "not run"):
            ui.say(f"- {name}: {status}", "dim")

    # ------------------------------------------------------------ the manifest and the table

    def _start_manifest(self, steps: list[StepSpec]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = record.opened(self.run_id, self.wf, self.runner.name, self.executor.name, steps, self.opts)
        self.state.write_manifest(self.run_id, self.manifest)

    def _end_manifest(self, steps: list[StepSpec], exc: BaseException | None) -> None:
        record.closed(self.manifest, steps, self.status, exc, bool(self.cancel_code))
        self.state.write_manifest(self.run_id, self.manifest)
        if self._phase == "steps":
            record.table(steps, self.status)
        if self.manifest["status"] == "submitted":
            self.state.note_detached(self.run_id)
            ui.say(f"run {self.run_id}: follow it with `itwin-run status {self.run_id}`")
