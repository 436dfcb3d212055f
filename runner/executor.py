"""The local executor: runs a workflow's steps in dependency order through one engine."""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from runner import ui
from runner.engines.base import Engine, Job, Mount
from runner.errors import StepFailed, UserError
from runner.images import LABEL, BuildOptions, ImageSpec, spec_for
from runner.workflow import StepSpec, Workflow

TAIL_LINES = 20


@dataclass
class RunOptions:
    user: str | None = None
    gpus: str | int | list[int] | None = None
    build: BuildOptions = field(default_factory=BuildOptions)
    lock: dict[str, str] | None = None  # step -> prebuilt image (--images LOCK)


def default_user() -> str:
    return f"{os.getuid()}:{os.getgid()}"


def state_dir(wf: Workflow) -> Path:
    return wf.root / ".itwin-run"


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
    def __init__(self, wf: Workflow, engine: Engine, opts: RunOptions):
        self.wf, self.engine, self.opts = wf, engine, opts
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.run_dir = state_dir(wf) / "runs" / self.run_id

    def run(self) -> None:
        if any(s.env.prefix for s in self.wf.steps):
            ui.say("note: env.prefix (the prototype's conda location) is ignored: steps run in container images", "dim")
        images = resolve_images(self.wf, self.engine, self.opts.build, lock=self.opts.lock)
        written = {s.output for s in self.wf.steps if s.output}
        for step in self.wf.steps:
            for d in step.inputs:
                if d not in written and not self.wf.datasets[d].exists():
                    raise UserError(f"{self.wf.path}:{step.line}: {step.name}.input: dataset {d!r} "
                                    f"({self.wf.datasets[d]}) does not exist and no step writes it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.engine.begin({f"{LABEL}.run": self.run_id})
        try:
            for step in self.wf.steps:
                self.run_step(step, images[step.name][0])
        finally:
            self.engine.end()

    def run_step(self, step: StepSpec, image: str) -> None:
        job = job_for(self.wf, step, image, self.opts, self.run_id)
        if step.output:
            prepare_output(self.wf.datasets[step.output], job.user)
        log_path = self.run_dir / f"{step.name}.log"
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        prefix = f"{step.name} | "
        out = sys.stdout
        start = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            def on_line(line: str) -> None:
                tail.append(line)
                log.write(line + "\n")
                out.write(prefix + line + "\n")
                out.flush()
            code = self.engine.run(job, on_line)
        if code != 0:
            raise StepFailed(step.name, code, list(tail), str(log_path))
        ui.say(f" {step.name} ({time.monotonic() - start:.1f}s)", "green", prefix="✓")
