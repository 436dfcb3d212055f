"""The engine protocols. An engine is two small classes, an ImageBuilder (step images: resolve, base, push, save,
load) and a StepRunner (run a step in a container: begin, run, interrupt, end), and what it made and what it needs of
the machine, declared together as one `Engine`. Adding an engine is one module that declares its Engine and one
entry point naming it in the `itwin_run.engines` group (pyproject.toml), as the built-in ones do."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.images import BuildOptions, ImageSpec, Pin
from runner.limits import Limits

OVERLAY = "::"  # a step image in two files (Apptainer): DEPS.sif::SOURCES.sqfs


def image_parts(ref: str) -> list[str]:
    """The files (or references) a step image is made of: one, or a dependency SIF and its source overlay."""
    return ref.split(OVERLAY)


@contextlib.contextmanager
def one_at_a_time(lock: Path, what: str) -> Iterator[None]:
    """Many processes may need the same new image at once (runs started together, SLURM jobs, users of one shared
    cache): the first makes it while the others wait on the lock file `lock`, saying so, then use what it made.
    The lock goes with its holder's process. OSError where the lock file cannot be made."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from runner import ui

            ui.say(f"waiting for another process that makes {what}", "dim")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Mount:
    source: Path
    target: Path
    read_only: bool


@dataclass
class Job:
    """One step, ready to run: everything an engine needs and nothing engine-specific."""

    step: str
    image: str
    argv: list[str]
    workdir: Path
    mounts: list[Mount]
    env: dict[str, str]
    user: str  # "uid:gid"
    gpus: str | int | list[int] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    limits: Limits = Limits()
    # What the engine measured, filled by run(): wall_s, cpu_s, peak_memory (bytes), and `killed` (why the engine
    # stopped it: "out of memory (limit 2G)", "time limit (30m)"). A key is absent when it could not be measured.
    usage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As JSON takes it (a SLURM job reads it back with from_dict)."""
        return {**self.__dict__, "workdir": str(self.workdir), "limits": dataclasses.asdict(self.limits),
                "mounts": [{"source": str(m.source), "target": str(m.target), "read_only": m.read_only}
                           for m in self.mounts]}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Job:
        return cls(**{**fields, "workdir": Path(fields["workdir"]), "limits": Limits(**fields.get("limits") or {}),
                      "mounts": [Mount(Path(m["source"]), Path(m["target"]), m["read_only"]) for m in fields["mounts"]]})


@dataclass
class Made:
    """An image (or SIF) itwin-run made, as `itwin-run images` and `prune` see it."""

    engine: str
    ref: str  # what step records name: repo:tag, or a SIF's path ("<none>@ID" for an untagged build stage)
    size: int
    created: float
    key: str  # what remove() takes: an image id, a path
    stage: bool = False  # untagged: a build stage or layer an interrupted build left
    busy: bool = False  # a container (running or not) uses it
    needs: str | None = None  # the image it is built on and cannot go without (its dependency image)


def scratch(where: Path, name: str) -> Path:
    """A new folder of this process's own in `where`, named NAME-PID-*; first, those of yours that a process killed
    outright left there (their PID is gone) are removed."""
    for left in where.glob(f"{name}-*-*"):
        pid = left.name.removeprefix(f"{name}-").split("-")[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and not Path(f"/proc/{pid}").exists() and left.stat().st_uid == os.getuid():
                shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-{os.getpid()}-", dir=where))


def failure_reason(runner: StepRunner, job: Job, code: int, tail: list[str]) -> str:
    """Why a step failed beyond its exit code: the engine stopped it at a limit (job.usage["killed"]), or what the
    engine's explain() makes of the code; "" when neither says more."""
    if job.usage.get("killed"):
        return f"step {job.step!r} killed: {job.usage['killed']}"
    said = runner.explain(job, code, tail)
    if not said and any("Read-only file system" in line for line in tail[-5:]):
        writable = [str(m.target) for m in job.mounts if not m.read_only]
        said = (f"step {job.step!r} wrote into a read-only mount (the project and the inputs are read-only): what "
                f"it keeps goes into its output dataset, {writable[0]} (its --output)" if writable else
                f"step {job.step!r} wrote into a read-only mount (the project and the inputs are read-only), and it "
                "has no output dataset to write into")
    return said


def time_limit(job: Job, stop: Callable[[], None]) -> threading.Timer | None:
    """A started timer that, at the step's time limit, notes it (job.usage["killed"]) and calls `stop`; None when
    the step has no time limit. The caller cancels it once the step ended."""
    if not job.limits.time:
        return None

    def up() -> None:
        job.usage["killed"] = f"time limit ({job.limits.time})"
        stop()

    timer = threading.Timer(job.limits.seconds or 0, up)
    timer.daemon = True
    timer.start()
    return timer


GPU_ALLOCATION = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL")


def allocated_gpus(gpus: str | int | list[int], env: Mapping[str, str]) -> dict[str, str]:
    """The GPU allocation a step gets, in the caller's terms: its CUDA_VISIBLE_DEVICES (what SLURM or the user gave
    this job) narrowed to what the step asks (`all`, a count, or indices into the visible devices), with SLURM's
    names for the same. Empty where the caller names no allocation (the step sees the node's GPUs)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return {k: env[k] for k in GPU_ALLOCATION if k in env}
    devices = [d for d in visible.split(",") if d]
    if gpus == "all":
        chosen = devices
    elif isinstance(gpus, int):
        chosen = devices[:gpus]
    else:
        chosen = [devices[i] for i in gpus if 0 <= i < len(devices)]
    out = {"CUDA_VISIBLE_DEVICES": ",".join(chosen)}
    out.update({k: env[k] for k in GPU_ALLOCATION[1:] if k in env})
    return out


def host_gpus(gpus: str | int | list[int], env: Mapping[str, str]) -> list[str] | None:
    """The node's GPU ids a step gets where the caller was given some (SLURM_JOB_GPUS: host indices as a container
    runtime counts them; else CUDA_VISIBLE_DEVICES): those it asks for among them, never the node's first ones.
    None where the caller names no allocation."""
    given = env.get("SLURM_JOB_GPUS") or env.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return None
    chosen = allocated_gpus(gpus, {"CUDA_VISIBLE_DEVICES": given})["CUDA_VISIBLE_DEVICES"]
    return chosen.split(",") if chosen else []


class GpuShare:
    """A node's GPUs among one run's concurrent steps where no allocation names them (a workstation): a step that
    asks for a count gets the least busy ones, so two `gpus: 1` steps under --jobs 2 on a two-GPU machine get one
    each, not both GPU 0. The node's GPUs come from `nvidia-smi` (none there: the runtime picks, as before)."""

    def __init__(self, found: list[str] | None = None):
        self._found = found
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, count: int) -> list[str] | None:
        """GPU ids for a step that asks for `count`; None when the node's GPUs are not known."""
        with self._lock:
            if self._found is None:
                self._found = _nvidia_smi()
            if not self._found:
                return None
            order = {g: i for i, g in enumerate(self._found)}
            chosen = sorted(self._found, key=lambda g: (self._busy.get(g, 0), order[g]))[:count]
            for g in chosen:
                self._busy[g] = self._busy.get(g, 0) + 1
            return chosen

    def give(self, ids: list[str]) -> None:
        with self._lock:
            for g in ids:
                self._busy[g] = max(0, self._busy.get(g, 0) - 1)


def _nvidia_smi() -> list[str]:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                            text=True)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip().isdigit()] if not listed.returncode \
        else []


class Cancelled(Exception):
    """The run was cancelled before this step's container (or process) started: nothing ran."""


class ImageBuilder(Protocol):
    name: str

    def resolve(self, spec: ImageSpec, opts: BuildOptions, *, build: bool = True) -> tuple[str, bool]:
        """The runnable reference for a spec and whether it is present; builds (or pulls) it when `build`."""
        ...

    def base(self, bootstrap: bool = False) -> str:
        """Make sure the project base image exists (bootstrapping its parent offline when asked); its reference."""
        ...

    def push(self, ref: str, registry: str) -> Pin:
        """Publish a resolved image under `registry` (HOST[:PORT]/NAMESPACE); returns its pinned references
        (REGISTRY/NAME:TAG@DIGEST), with its layers' when it has sources."""
        ...

    def identity(self, ref: str) -> str | None:
        """What a resolved image is, byte for byte, where the engine knows it cheaply (Docker's image id); None."""
        ...

    def oci_ref(self, ref: str) -> str:
        """The OCI image behind a resolved reference (itself for Docker, the image a SIF was made from)."""
        ...

    def save(self, refs: list[str], dest: Path) -> list[Path]:
        """Write these images (as resolve() returned them) into dest, for a site with no registry."""
        ...

    def load(self, src: Path) -> list[str]:
        """Make images saved into src by save() available to this engine."""
        ...


@dataclass(frozen=True)
class Engine:
    """What an engine module declares, and its entry point names (`docker = "runner.engines.docker:ENGINE"`)."""

    name: str
    builder: Callable[..., ImageBuilder]  # (parent=..., verbose=...) -> the engine's ImageBuilder
    runner: Callable[[], StepRunner]
    made: Callable[[], list[Made]]  # what it made on this machine (`images`, `prune`); UserError when it cannot ask
    remove: Callable[[Made], None]
    doctor: Callable[[bool], list]  # (needs_gpu) -> runner.checks.Check of this machine
    aliases: tuple[str, ...] = ()
    image_kind: str = "DockerImage"  # its images as the Workflow Run Crate terms name them (SIFImage, DockerImage)
    # Host paths through which a container would reach this engine (its socket, its storage, its image files), with
    # why: the mount policy refuses a dataset at, in or around one of them, whichever engine the run uses.
    guarded: Callable[[], list[tuple[Path, str]]] = list
    store: Callable[[], Path | None] = lambda: None  # the folder its images are files in (SIFs); None: a daemon's
    login: str = "docker login {host}"  # how a user gives it a registry's credentials
    credentials: Callable[[], set[str]] = set  # the registries (host[:port]) it has credentials for


class StepRunner(Protocol):
    name: str
    cwltool_args: list[str]  # how cwltool runs DockerRequirement tools with this engine
    cwl_output_at_dataset: bool  # whether cwltool can put a tool's output directory at the dataset's own path

    def default_user(self, root: Path) -> str:
        """The uid:gid steps run as when --user is not given."""
        ...

    def begin(self, labels: dict[str, str]) -> None:
        """A run starts: set up what its steps share (labelled with `labels`)."""
        ...

    # Optional: an engine may define prepare(job), called (from a thread of its own) for a step that runs once the
    # running ones end: it makes ready what starting it needs (Docker creates its container), so that run() of the
    # same job only starts it; what run() does not take, end() removes.

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        """Run a job to completion, calling on_line for each output line; returns its exit code. Raises Cancelled
        when interrupt() came first. The container (or process) is gone when this returns or raises."""
        ...

    def explain(self, job: Job, code: int, tail: list[str]) -> str:
        """What a failed step's exit code means when the engine says more than the step (a command not in the
        image, say); "" when it does not."""
        ...

    def interrupt(self, force: bool) -> None:
        """Stop every step of this run, running or about to start (kill at once when `force`); from now on run()
        starts nothing."""
        ...

    def end(self) -> None:
        """The run is over (or interrupted): remove what begin() set up."""
        ...

    def clean(self, over: Callable[[str], bool]) -> None:
        """Remove what earlier runs left that are over by `over(run_id)` (their runner was killed outright, or a
        restarted daemon kept their containers); what belongs to other runs or other projects stays."""
        ...
