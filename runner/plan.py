"""What a run is made of, before it starts: the steps selected, their inputs checked, their images resolved, and
each step as a Job (its mounts, env and labels); an output folder made ready for the step's user; and, for
`build`, the step images pushed (with their pin file) or saved."""

from __future__ import annotations

import json
import os
from collections import Counter
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from runner import ui
from runner.engines.base import ImageBuilder, Job, Mount
from runner.errors import UsageError
from runner.executors.base import RunOptions
from runner.images import LABEL, BuildOptions, ImageSpec, Pin, spec_for, write_pins
from runner.limits import THREAD_VARS, Limits
from runner.sweep import ENV_BEST, ENV_POINT, ENV_SWEEP
from runner.tree import empty_output
from runner.workflow import StepSpec, Workflow, dependencies


def select(wf: Workflow, opts: RunOptions) -> list[StepSpec]:
    """--only / --from / --until: the slice of the workflow to run, in dependency order."""
    deps = dependencies(wf)
    names = [s.name for s in wf.steps]
    for n in [*opts.only, opts.from_, opts.until, *(opts.force or [])]:
        if n is not None and n not in names:
            import difflib

            close = difflib.get_close_matches(n, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"no step named {n!r} in {wf.path.name} ({hint}steps: {', '.join(names)})")

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
    chosen |= {s.name for s in wf.steps if s.parent in chosen}  # a sweep's step brings its points
    return [s for s in wf.steps if s.name in chosen]


def check_inputs(wf: Workflow, steps: list[StepSpec]) -> None:
    """Every input of these steps exists or one of them writes it (checked before anything is built or run)."""
    written = {s.output for s in steps if s.output}
    for step in steps:
        for d in step.inputs:
            if d not in written and not wf.datasets[d].exists():
                raise UsageError(f"{wf.path}:{step.at}: {step.name}.input: dataset {d!r} ({wf.datasets[d]}) does "
                                 "not exist and no selected step writes it")


def image_specs(wf: Workflow, pinned: dict[str, Pin] | None = None) -> dict[str, ImageSpec]:
    """Each step's image spec; with a pin file's images, exactly those prebuilt references."""
    if pinned is None:
        own = {s.name: spec_for(s, wf) for s in wf.steps if not s.parent}
        return {s.name: own[s.parent or s.name] for s in wf.steps}  # a sweep's points: its step's image, made once
    missing = [s.name for s in wf.steps if not s.parent and s.name not in pinned]
    if missing:
        raise UsageError(f"the image file names no image for step(s) {', '.join(missing)}: rebuild it with "
                         "`itwin-run build --push`")
    pins = {s.name: pinned[s.parent or s.name] for s in wf.steps}  # a sweep's points run its step's image
    return {name: ImageSpec(kind="image", name=pin.image, step=name, image=pin.image, pin=pin)
            for name, pin in pins.items()}


def resolve_images(wf: Workflow, builder: ImageBuilder, opts: BuildOptions, *, build: bool = True,
                   pinned: dict[str, Pin] | None = None) -> dict[str, tuple[str, bool]]:
    """Step name -> (image reference, present); equal specs are resolved (and built) once."""
    specs = image_specs(wf, pinned)
    done: dict[tuple, tuple[str, bool]] = {}
    out = {}
    for name, spec in specs.items():
        key = (spec.kind, spec.name, spec.image, tuple(spec.digest_parts))
        if key not in done:
            done[key] = builder.resolve(spec, opts, build=build)
        out[name] = done[key]
    return out


def cpu_share(steps: list[StepSpec], deps: dict[str, set[str]], jobs: int) -> int | None:
    """The threads each step may start when up to `jobs` steps run side by side on this machine: its CPUs over how
    many of `steps` can run at once (the widest level of their DAG, a sweep's points `parallel` at a time); None
    when they run one at a time. ITWIN_RUN_THREADS=N says N for every step (a machine shared with other work)."""
    given = os.environ.get("ITWIN_RUN_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    level: dict[str, int] = {}
    for name in TopologicalSorter({s.name: deps.get(s.name, set()) for s in steps}).static_order():
        level[name] = 1 + max((level[u] for u in deps.get(name, ()) if u in level), default=0)
    width: Counter = Counter()
    for s in steps:
        if not s.sweep:  # a sweep's own step runs no container
            width[level[s.name], s.parent] += 1
    parallel = {s.name: s.sweep.parallel for s in steps if s.sweep and s.sweep.parallel}
    side = Counter()
    for (lvl, sweep), n in width.items():
        side[lvl] += min(n, parallel.get(sweep or "", n))
    at_once = min(jobs, max(side.values(), default=1))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // at_once) if at_once > 1 else None


def job_for(wf: Workflow, step: StepSpec, image: str, user: str, gpus: Any, run_id: str,
            limits: Limits | None = None, binds: list[Path] = (), share: int | None = None) -> Job:
    """`share`: the threads a step may start beside the others (cpu_share); its own CPU limit comes first, and the
    step's own thread settings (env.vars) win over both."""
    own = {wf.root, *wf.datasets.values()}
    mounts = [Mount(wf.root, wf.root, read_only=True), *(Mount(b, b, read_only=True) for b in binds if b not in own)]
    mounts += [Mount(wf.datasets[d], wf.datasets[d], read_only=True) for d in step.inputs]
    if step.output:
        mounts.append(Mount(wf.datasets[step.output], wf.datasets[step.output], read_only=False))
    env = {k: ("1" if v is True else "0" if v is False else str(v)) for k, v in step.env.vars.items()}
    if step.point and step.parent:  # what a point is told: its sweep (one MLflow parent run) and how the best is chosen
        best = wf.step(step.parent).sweep
        env |= {ENV_SWEEP: step.parent, ENV_POINT: step.point.slug,
                **({ENV_BEST: f"{best.best.metric}:{best.best.mode}"} if best else {})}
    limits = limits or step.limits
    threads = max(1, int(limits.cpus)) if limits.cpus else share
    if threads and not any(v in env for v in THREAD_VARS):
        env |= dict.fromkeys(THREAD_VARS, str(threads))
    return Job(step=step.name, image=image, argv=wf.argv(step), workdir=wf.root, mounts=mounts, env=env, user=user,
               gpus=gpus if gpus is not None else step.gpus, limits=limits,
               labels={f"{LABEL}.run": run_id, f"{LABEL}.step": step.name})


def at_parallel_limit(wf: Workflow, sweep: str, running: list[StepSpec]) -> bool:
    """Whether as many points of the sweep run as its `parallel` allows."""
    limit = wf.step(sweep).sweep.parallel  # type: ignore[union-attr]
    return limit is not None and sum(s.parent == sweep for s in running) >= limit


def next_in_line(pending: list[StepSpec], deps: dict[str, set[str]], status: dict[str, str], count: int,
                 prepared: set[str]) -> list[StepSpec]:
    """The steps to prepare now, so that at most `count` wait prepared: those that start once running steps end
    (each upstream step of theirs running or done, one at least running: one with none may be up to date). Not a
    sweep's own step (it runs no container) nor a trial whose values are asked when it starts."""
    room = count - sum(s.name in prepared for s in pending)
    return [s for s in pending if s.name not in prepared and not s.sweep and not (s.point and not s.point.values)
            and all(status.get(u) in ("running", "done", "up to date") for u in deps[s.name])
            and any(status.get(u) == "running" for u in deps[s.name])][:max(0, room)]


def check_access(wf: Workflow, steps: list[StepSpec], user: str) -> None:
    """Before anything starts: the steps' uid can read the project and the inputs and reach the outputs, and each
    output folder can be made and written. One line each, with the fix; the run never starts half-way."""
    uid_s, _, gid_s = user.partition(":")
    uid = int(uid_s) if uid_s.isdigit() else None
    gid = int(gid_s) if gid_s.isdigit() else -1
    reads = [wf.root, *{wf.datasets[d] for s in steps for d in s.inputs if wf.datasets[d].exists()}]
    writes = list(dict.fromkeys(out for s in steps if (out := wf.output_dir(s)) is not None))
    root = os.getuid() == 0
    fix = "or run the steps as root (--user 0:0)" if root else "or choose another location"
    for path in [*reads, *writes]:
        if uid not in (None, 0) and (path == Path("/root") or Path("/root") in path.parents):
            raise UsageError(f"{path} is under /root, which no uid but root can enter in a step's image (steps run "
                             f"as uid {uid}): move it out of /root {fix}")
    for path in reads:
        if uid not in (None, 0) and not _allows(path, uid, gid, 0o5):
            raise UsageError(f"{path} is not readable by uid {uid}, which steps run as"
                             f"{' when itwin-run runs as root' if root else ''}: make it readable (chmod o+rx {path}) {fix}")
    for path in writes:
        made = next(p for p in (path, *path.parents) if p.exists())
        if not made.is_dir():
            raise UsageError(f"output {path}: {made} is a file, not a folder: choose another location")
        if not os.access(made, os.W_OK | os.X_OK):
            raise UsageError(f"output {path}: {made} is not writable by you (uid {os.getuid()}): make it writable "
                             f"(chmod u+w {made}) or choose another location")


def _allows(path: Path, uid: int, gid: int, bits: int) -> bool:
    """Whether uid:gid has these permission bits (r=4, w=2, x=1) on path, by its mode (as the kernel checks them)."""
    if uid == os.getuid():
        return os.access(path, (os.R_OK if bits & 4 else 0) | (os.W_OK if bits & 2 else 0) | (os.X_OK if bits & 1 else 0))
    st = path.stat()
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return (st.st_mode >> shift) & bits == bits


def prepare_output(path: Path, user: str) -> None:
    """Create an output dataset directory; when we are root, it (and what an earlier run left in it) belongs to
    the step's uid, so that the step can write it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.getuid() != 0:
        return
    uid_s, _, gid_s = user.partition(":")
    if not uid_s.isdigit():
        return
    uid, gid = int(uid_s), int(gid_s) if gid_s.isdigit() else int(uid_s)
    if path.stat().st_uid == uid:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def wrote_nothing(step: StepSpec, output: str | None) -> str:
    """Why a step that exited 0 is not done: nothing is in its output (unless it allows that); "" when it is done."""
    if not empty_output(output, step.allow_empty_output):
        return ""
    return (f"step {step.name!r} exited 0 but wrote nothing into its output dataset {step.output!r} ({output}); "
            "a step that may write nothing says `allow_empty_output: true`")


def push(wf: Workflow, builder: ImageBuilder, refs: dict[str, str], registry: str, pins: Path | None) -> dict[str, str]:
    """Push each step image once and write the pin file (default: WORKFLOW.images.json beside it); step -> the
    pushed reference."""
    pushed = {ref: builder.push(ref, registry) for ref in dict.fromkeys(refs.values())}
    pins = pins or wf.path.with_name(wf.path.stem + ".images.json")
    write_pins(pins, wf.path, {step: pushed[ref] for step, ref in refs.items() if not wf.step(step).parent})
    ui.say(f"image pin file: {pins}")
    return {step: pushed[ref].image for step, ref in refs.items()}


def save(wf: Workflow, builder: ImageBuilder, refs: dict[str, str], dest: Path) -> None:
    """The step images into dest, with images.json naming what `load` brings back into Docker."""
    dest.mkdir(parents=True, exist_ok=True)
    builder.save(list(dict.fromkeys(refs.values())), dest)
    oci = {step: builder.oci_ref(ref) for step, ref in refs.items()}
    (dest / "images.json").write_text(json.dumps({"workflow": str(wf.path), "images": oci}, indent=2) + "\n")
