"""The executor protocol: what the run session asks of a backend (Snakemake's executor plugins are the model)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.engines.base import Job, StepRunner
from runner.images import BuildOptions, Pin
from runner.workflow import StepSpec, Workflow


@dataclass
class RunOptions:
    user: str | None = None
    gpus: str | int | list[int] | None = None
    cpus: float | None = None  # --cpus / --memory / --retries: for every step, over the file's values
    memory: str | None = None
    retries: int | None = None
    build: BuildOptions = field(default_factory=BuildOptions)
    pinned: dict[str, Pin] | None = None  # step -> prebuilt image (--images FILE)
    jobs: int = 1
    only: list[str] = field(default_factory=list)
    from_: str | None = None
    until: str | None = None
    force: list[str] | None = None  # None: nothing forced; []: everything; names: those steps
    keep_going: bool = False
    dry_run: bool = False
    allowed_mounts: list[str] = field(default_factory=list)
    binds: list[Path] = field(default_factory=list)  # the site profile's folders: read-only in every step
    site: str | None = None  # the site profile's name


@dataclass
class Submission:
    """One step handed to an executor: the job to run and what its completion record is made of."""

    step: StepSpec
    job: Job
    key: str  # the step record's key (workflow file and step)
    parts: dict[str, Any]  # fingerprint parts but the inputs
    inputs: dict[str, str]  # dataset -> path
    output: str | None
    log: Path
    after: list[str] = field(default_factory=list)  # handles of upstream steps (executors that order themselves)


@dataclass
class Outcome:
    """What became of a submitted step: status done | failed | interrupted; `ended` is time.monotonic()."""

    step: str
    status: str
    exit_code: int | None = None
    reason: str = ""  # a failure that is not the step's own exit code (engine error, GPU refused, job cancelled)
    tail: list[str] = field(default_factory=list)
    ended: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)  # what the step used, as far as it was measured


@dataclass
class Loop:
    """The run session's scheduling state: steps still to start, those running (with every handle), the first failure."""

    pending: list[StepSpec]
    active: dict[str, Submission] = field(default_factory=dict)
    handles: dict[str, str] = field(default_factory=dict)
    failure: Outcome | None = None
    stopping: bool = False  # siblings of a failed step are being stopped (no --keep-going)
    cancel_sent: bool = False
    kill_sent: bool = False


def no(question: str) -> bool:
    return False


@dataclass
class Common:
    """What every executor is made from: the run's step runner and workflow, its common flags, and how to ask the
    user a yes/no question (the command line's prompt; by default, and with no terminal, the answer is no)."""

    runner: StepRunner
    wf: Workflow
    jobs: int = 1
    keep_going: bool = False
    ask: Callable[[str], bool] = no


def setting(default: Any, help: str, flag: str | None = None) -> Any:
    """A field of an executor's settings dataclass: the command line makes it `--FIELD-NAME` (or `flag`) on `run`,
    with this help, given only with that executor (Snakemake's ExecutorSettingsBase is the model)."""
    meta = {"help": help, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


class Executor(Protocol):
    name: str
    settings: type | None  # a dataclass of setting() fields: this executor's own flags (None: it has none)
    orders_itself: bool  # takes steps whose upstream steps are still running (their handles in `after`)
    records_itself: bool  # writes step records where the step runs (SLURM jobs outlive a detached session)
    whole_workflow: bool  # runs all selected steps or none (cwltool): skipped only when every one is up to date
    runs_as_caller: bool  # steps run as the user who started itwin-run (cwltool), not as the session's step user
    single_file_images: bool  # takes a step image as one file (cwltool's SIF): no dependency SIF + source overlay
    refuses_sweeps: str  # why a sweep cannot run here ("" when it can): the best point is picked by this process
    arrays: bool  # takes a sweep's points together (submit_array), as one job array, `parallel` at a time
    shares_cpus: bool  # its steps run side by side on this machine's CPUs: each is told its share (threads)
    # (Where it starts containers itself) a step that runs once the running ones end: its container made now, so
    # that starting it is one call (StepRunner.prepare); None where the executor has no use for it.
    prepare: Callable[[Job], None] | None
    # What it tells with no run of its own in progress (class level; None where it has nothing to add):
    doctor: Callable[[bool], list] | None  # (needs_gpu) -> runner.checks.Check of what it needs of this machine
    status: Callable[[Path, str], list[tuple[str, str, str]]] | None  # (root, run_id) -> (step, handle, state) now
    outcomes: Callable[[dict], dict[str, str] | None] | None  # a detached run's record -> how each step ended

    @classmethod
    def create(cls, common: Common, settings: Any) -> Executor:
        """The executor for a run: from what every executor gets, and its own settings (None when it has none)."""
        ...

    def check(self, opts: RunOptions, steps: list[StepSpec]) -> None:
        """Refuse (UsageError) what this executor cannot honour, before anything starts."""
        ...

    def dry_run(self, subs: list[Submission], present: dict[str, bool]) -> None:
        """Print what would run."""
        ...

    def start(self, run_id: str, run_dir: Path, labels: dict[str, str]) -> None: ...

    def has_room(self, active: int) -> bool: ...

    def submit(self, sub: Submission) -> str:
        """Start (or queue) a step; returns its handle (a job id, a step name)."""
        ...

    def submit_array(self, subs: list[Submission], parallel: int | None) -> list[str]:
        """(Where `arrays`) a sweep's points at once, at most `parallel` running; their handles, in order."""
        ...

    def detached(self, active: dict[str, Submission]) -> bool:
        """True when the session should leave the submitted steps to run on their own (SLURM --detach)."""
        ...

    def poll(self, active: dict[str, Submission], timeout: float) -> list[Outcome]:
        """Outcomes of active steps that ended, waiting up to `timeout` for one."""
        ...

    def cancel(self, active: dict[str, Submission], force: bool, interrupted: bool) -> None:
        """Stop these steps (kill when `force`) because the run was interrupted, or because a step failed; must not
        block for long. Their outcomes come through poll()."""
        ...

    def close(self) -> None: ...
