"""The local executor: runs a workflow's steps in dependency order through one engine."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from runner import ui
from runner.engines.base import Engine, Job, Mount
from runner.errors import StepFailed, UserError
from runner.images import LABEL, BuildOptions, ImageSpec, spec_for
from runner.state import State, fingerprint, tree_manifest
from runner.workflow import StepSpec, Workflow, dependencies

TAIL_LINES = 20


@dataclass
class RunOptions:
    user: str | None = None
    gpus: str | int | list[int] | None = None
    build: BuildOptions = field(default_factory=BuildOptions)
    lock: dict[str, str] | None = None  # step -> prebuilt image (--images LOCK)
    jobs: int = 1
    only: list[str] = field(default_factory=list)
    from_: str | None = None
    until: str | None = None
    force: list[str] | None = None  # None: nothing forced; []: everything; names: those steps


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: `code` is what the run exits with (130 or 143)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def default_user() -> str:
    return f"{os.getuid()}:{os.getgid()}"


def step_fingerprint(parts: dict, inputs: dict[str, Path]) -> str:
    return fingerprint(**parts, inputs={d: tree_manifest(p) for d, p in inputs.items()})


def select(wf: Workflow, opts: RunOptions) -> list[StepSpec]:
    """--only / --from / --until: the slice of the workflow to run, in dependency order."""
    deps = dependencies(wf)
    names = [s.name for s in wf.steps]
    for n in [*opts.only, opts.from_, opts.until, *(opts.force or [])]:
        if n is not None and n not in names:
            raise UserError(f"no step named {n!r} in {wf.path.name} (steps: {', '.join(names)})")

    def closure(start: str, edges: dict[str, set[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    chosen = set(names)
    if opts.only:
        chosen &= set(opts.only)
    if opts.from_:
        downstream: dict[str, set[str]] = {n: set() for n in names}
        for n, ups in deps.items():
            for up in ups:
                downstream[up].add(n)
        chosen &= closure(opts.from_, downstream)
    if opts.until:
        chosen &= closure(opts.until, deps)
    return [s for s in wf.steps if s.name in chosen]


def image_specs(wf: Workflow, lock: dict[str, str] | None = None) -> dict[str, ImageSpec]:
    """Each step's image spec; with a lock file's images, exactly those prebuilt references."""
    if lock is None:
        return {s.name: spec_for(s) for s in wf.steps}
    missing = [s.name for s in wf.steps if s.name not in lock]
    if missing:
        raise UserError(f"the lock file names no image for step(s) {', '.join(missing)}: rebuild it with "
                        "`itwin-run build --push`")
    return {s.name: ImageSpec(kind="image", name=lock[s.name], step=s.name, image=lock[s.name]) for s in wf.steps}


def resolve_images(wf: Workflow, engine: Engine, opts: BuildOptions, *, build: bool = True,
                   lock: dict[str, str] | None = None) -> dict[str, tuple[str, bool]]:
    """Step name -> (image reference, present); equal specs are resolved (and built) once."""
    specs = image_specs(wf, lock)
    done: dict[tuple, tuple[str, bool]] = {}
    out = {}
    for name, spec in specs.items():
        key = (spec.kind, spec.name, spec.image, tuple(spec.digest_parts))
        if key not in done:
            done[key] = engine.resolve(spec, opts, build=build)
        out[name] = done[key]
    return out


def job_for(wf: Workflow, step: StepSpec, image: str, opts: RunOptions, run_id: str) -> Job:
    mounts = [Mount(wf.root, wf.root, read_only=True)]
    mounts += [Mount(wf.datasets[d], wf.datasets[d], read_only=True) for d in step.inputs]
    if step.output:
        mounts.append(Mount(wf.datasets[step.output], wf.datasets[step.output], read_only=False))
    env = {k: ("1" if v is True else "0" if v is False else str(v)) for k, v in step.env.vars.items()}
    gpus = opts.gpus if opts.gpus is not None else step.gpus
    return Job(step=step.name, image=image, argv=wf.argv(step), workdir=wf.root, mounts=mounts, env=env,
               user=opts.user or default_user(), gpus=gpus,
               labels={f"{LABEL}.run": run_id, f"{LABEL}.step": step.name})


def prepare_output(path: Path, user: str) -> None:
    """Create an output dataset directory; owned by the step's uid when we are root and it is someone else."""
    if path.exists():
        return
    path.mkdir(parents=True)
    if os.getuid() == 0:
        uid, _, gid = user.partition(":")
        if uid.isdigit() and int(uid) != 0:
            os.chown(path, int(uid), int(gid) if gid.isdigit() else int(uid))


class Runner:
    """Runs the selected steps in dependency order, up to `jobs` at a time; skips steps that are up to date."""

    def __init__(self, wf: Workflow, engine: Engine, opts: RunOptions):
        self.wf, self.engine, self.opts = wf, engine, opts
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.state = State(wf.root)
        self.run_dir = self.state.runs / self.run_id
        self.status: dict[str, str] = {}
        self.started = 0
        self._out = threading.Lock()
        self.manifest: dict = {}

    # ------------------------------------------------------------ the run

    def run(self) -> None:
        steps = select(self.wf, self.opts)
        if any(s.env.prefix for s in steps):
            ui.say("note: env.prefix (the prototype's conda location) is ignored: steps run in container images", "dim")
        self.state.lock()
        try:
            self._run(steps)
        finally:
            self.state.unlock()

    def _run(self, steps: list[StepSpec]) -> None:
        wf = self.wf
        sub = Workflow(path=wf.path, root=wf.root, datasets=wf.datasets, steps=steps, extra=wf.extra)
        images = resolve_images(sub, self.engine, self.opts.build, lock=self.opts.lock)
        written = {s.output for s in steps if s.output}
        for step in steps:
            for d in step.inputs:
                if d not in written and not wf.datasets[d].exists():
                    raise UserError(f"{wf.path}:{step.line}: {step.name}.input: dataset {d!r} "
                                    f"({wf.datasets[d]}) does not exist and no selected step writes it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = {"run_id": self.run_id, "workflow": str(wf.path), "root": str(wf.root),
                         "engine": self.engine.name, "started": time.time(), "status": "running", "steps": {}}
        self.state.write_manifest(self.run_id, self.manifest)
        deps = {s.name: {d for d in dependencies(wf)[s.name] if d in {x.name for x in steps}} for s in steps}
        failure: StepFailed | None = None
        interrupted: Interrupted | None = None
        previous = self._signals()
        self.engine.begin({f"{LABEL}.run": self.run_id})
        pool = ThreadPoolExecutor(max_workers=max(1, self.opts.jobs), thread_name_prefix="step")
        running: dict[Future, StepSpec] = {}
        pending = list(steps)
        try:
            while pending or running:
                if failure is None and interrupted is None:
                    for step in list(pending):
                        if len(running) >= max(1, self.opts.jobs):
                            break
                        if any(self.status.get(d) is None or self.status[d] == "running" for d in deps[step.name]):
                            continue
                        pending.remove(step)
                        if any(self.status[d] not in ("done", "up to date") for d in deps[step.name]):
                            self._finish(step, "skipped: upstream failed")
                        elif self._up_to_date(step, images[step.name][0]):
                            self._finish(step, "up to date")
                        else:
                            self.status[step.name] = "running"
                            running[pool.submit(self.run_step, step, images[step.name][0])] = step
                else:
                    for step in pending:
                        self._finish(step, "skipped: upstream failed" if self._needs_failed(step, deps)
                                     else "not run")
                    pending = []
                if not running:
                    continue
                done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    step = running.pop(fut)
                    try:
                        fut.result()
                    except StepFailed as exc:
                        failure = failure or exc
                    except Interrupted as exc:
                        interrupted = interrupted or exc
                    except Exception:
                        self._finish(step, "failed")
                        raise
        except (KeyboardInterrupt, Interrupted) as exc:
            interrupted = exc if isinstance(exc, Interrupted) else Interrupted(130)
            self._stop(running)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.engine.end()
            signal.signal(signal.SIGTERM, previous)
            for step in pending:
                self.status.setdefault(step.name, "not run")
            self.manifest["ended"] = time.time()
            self.manifest["status"] = ("interrupted" if interrupted else "failed" if failure else "succeeded")
            self.state.write_manifest(self.run_id, self.manifest)
        self._table(steps)
        if interrupted:
            raise interrupted
        if failure:
            raise failure

    def _needs_failed(self, step: StepSpec, deps: dict[str, set[str]]) -> bool:
        todo, seen = list(deps[step.name]), set()
        while todo:
            d = todo.pop()
            if self.status.get(d) in ("failed", "interrupted"):
                return True
            if d not in seen:
                seen.add(d)
                todo += deps.get(d, ())
        return False

    def _signals(self):
        def on_term(signum, frame):
            raise Interrupted(143)

        if threading.current_thread() is threading.main_thread():
            return signal.signal(signal.SIGTERM, on_term)
        return signal.getsignal(signal.SIGTERM)

    def _stop(self, running: dict[Future, StepSpec]) -> None:
        """Stop the running steps (within 10 s); a second Ctrl-C kills them at once."""
        ui.say("interrupted: stopping running steps (Ctrl-C again to kill them now)", "yellow")
        for fut in running:
            fut.cancel()
        try:
            self.engine.interrupt(force=False)
            wait(running, timeout=15)
        except KeyboardInterrupt:
            self.engine.interrupt(force=True)
            wait(running, timeout=10)
        for step in running.values():
            self._finish(step, "interrupted")

    def _table(self, steps: list[StepSpec]) -> None:
        width = max(len(s.name) for s in steps)
        for s in steps:
            st = self.status.get(s.name, "not run")
            style = "green" if st in ("done", "up to date") else "red" if st in ("failed", "interrupted") else "dim"
            ui.say(f"  {s.name:<{width}}  {st}", style)

    # ------------------------------------------------------------ one step

    def fingerprint_parts(self, step: StepSpec, image: str) -> dict:
        """What a step's fingerprint is made of, but its inputs' manifests (taken when it is checked or done)."""
        job = job_for(self.wf, step, image, self.opts, "fp")
        files = {}  # project files the command names (its script, a config): editing one reruns the step
        for token in job.argv:
            path = self.wf.root / token
            if "/" in token or "." in token:
                try:
                    st = path.stat()
                except (OSError, ValueError):
                    continue
                if path.is_file():
                    files[token] = (st.st_size, st.st_mtime_ns)
        return {"image": image, "engine": self.engine.name, "argv": job.argv, "env": job.env, "user": job.user,
                "gpus": job.gpus, "files": files}

    def _fingerprint(self, step: StepSpec, image: str) -> str:
        return step_fingerprint(self.fingerprint_parts(step, image),
                                {d: self.wf.datasets[d] for d in step.inputs})

    def _up_to_date(self, step: StepSpec, image: str) -> bool:
        force = self.opts.force
        if force is not None and (not force or step.name in force):
            return False
        output = self.wf.datasets[step.output] if step.output else None
        return self.state.up_to_date(step.name, self._fingerprint(step, image), output)

    def _finish(self, step: StepSpec, status: str, **info) -> None:
        self.status[step.name] = status
        entry = self.manifest["steps"].setdefault(step.name, {})
        entry.update(status=status, **info)
        if status in ("up to date", "skipped: upstream failed", "not run"):
            ui.say(f"- {step.name}: {status}", "dim")

    def run_step(self, step: StepSpec, image: str) -> None:
        job = job_for(self.wf, step, image, self.opts, self.run_id)
        output = self.wf.datasets[step.output] if step.output else None
        fp = self._fingerprint(step, image)
        self.state.forget(step.name)  # the output is not complete until this step says so again
        if output:
            prepare_output(output, job.user)
        log_path = self.run_dir / f"{step.name}.log"
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        prefix = f"{step.name} | "
        start = time.time()
        self.manifest["steps"][step.name] = {
            "image": image, "engine": self.engine.name, "argv": job.argv, "user": job.user, "gpus": job.gpus,
            "mounts": [{"source": str(m.source), "target": str(m.target), "read_only": m.read_only} for m in job.mounts],
            "env": job.env, "fingerprint": fp, "start": start, "status": "running", "log": str(log_path)}
        with open(log_path, "w", encoding="utf-8") as log:
            def on_line(line: str) -> None:
                tail.append(line)
                log.write(line + "\n")
                with self._out:
                    sys.stdout.write(prefix + line + "\n")
                    sys.stdout.flush()
            code = self.engine.run(job, on_line)
        self.started += 1
        info = {"end": time.time(), "exit_code": code}
        if code != 0:
            self._finish(step, "failed", **info)
            raise StepFailed(step.name, code, list(tail), str(log_path))
        self.state.complete(step.name, fp, output, self.run_id)
        self._finish(step, "done", **info)
        ui.say(f" {step.name} ({info['end'] - start:.1f}s)", "green", prefix="✓")
