"""The workflow model: the 2023 prototype's YAML (datasets + steps), validated with line numbers."""


import functools
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic import ValidationError as PydanticError

from runner.errors import UsageError, ValidationError
from runner.limits import DURATION, MEMORY, PARTITION, SBATCH_FLAG, SLURM_TIME, Limits, duration_seconds, memory_bytes, sbatch_flag  # noqa: F401 (the model's words for them)
from runner.policy import mount_problem, under
from runner.sweep import MAX_POINTS, Point, Scalar, Sweep, check, points
from runner.yamlfile import Lines, by_line, closest, compose, control_characters, dotted, line_of, short, union_tag, where

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Partition = Annotated[str, StringConstraints(max_length=256, pattern=PARTITION)]
SlurmTime = Annotated[str, StringConstraints(max_length=32, pattern=SLURM_TIME)]
Memory = Annotated[str, StringConstraints(max_length=32, pattern=r"^\d+[KMGT]?B?$")]
SbatchFlag = Annotated[str, StringConstraints(max_length=512, pattern=SBATCH_FLAG), AfterValidator(sbatch_flag)]


class Env(BaseModel):
    """How a step's image is made: an env file, a prebuilt image, and local packages to install on top of it."""

    model_config = ConfigDict(extra="forbid")
    file: str | None = None
    prefix: str | None = None  # the prototype's conda location: accepted and ignored
    source: str | list[str] | None = None  # package directories or wheel files, installed after the env file's
    image: str | None = None
    vars: dict[EnvName, Scalar] = Field(default_factory=dict)


class Slurm(BaseModel):
    """Per-step SLURM options (the SLURM executor; ignored by the local one)."""

    model_config = ConfigDict(extra="forbid")
    partition: Partition | None = None
    time: SlurmTime | None = None
    nodes: Annotated[int, Field(ge=1, le=100000)] | None = None
    ntasks_per_node: Annotated[int, Field(ge=1, le=4096)] | None = None
    cpus_per_task: Annotated[int, Field(ge=1, le=4096)] | None = None
    mem: Memory | None = None
    account: Partition | None = None
    extra: list[SbatchFlag] = Field(default_factory=list)


GpuSpec = Literal["all"] | Annotated[int, Field(ge=0, le=1024)] | list[Annotated[int, Field(ge=0)]] | None


class Resources(BaseModel):
    """What a step may use, for every engine and executor (per step, or a workflow-wide default)."""

    model_config = ConfigDict(extra="forbid")
    cpus: Annotated[float, Field(gt=0, le=4096)] | None = None
    memory: Annotated[str, StringConstraints(max_length=32, pattern=MEMORY)] | None = None  # 512M, 2G, 1.5G
    time: Annotated[str, StringConstraints(max_length=32, pattern=DURATION)] | None = None  # 30m, 2h, 90s, 01:30:00
    gpus: GpuSpec = None


class Step(BaseModel):
    """One step: a command run in a container built from `env`, reading its input datasets and writing its output."""

    model_config = ConfigDict(extra="forbid")
    input: Name | list[Name] | None = None
    output: Name | None = None
    command: Annotated[str, StringConstraints(min_length=1, max_length=65536)]
    env: Env | None = None
    params: dict[Name, Scalar | list[Scalar] | None] | None = None
    gpus: GpuSpec = None
    resources: Resources | None = None
    retries: Annotated[int, Field(ge=0, le=100)] = 0  # a failed step runs again up to this many times
    slurm: Slurm | None = None
    depends: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] | None = None
    sweep: Sweep | None = None
    allow_empty_output: bool = False  # exit 0 with nothing in its output counts as done


class Dataset(BaseModel):
    """A folder a step reads or writes, mounted at the same path in the container."""

    model_config = ConfigDict(extra="forbid")
    location: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class WorkflowFile(BaseModel):
    """The file as written. Top-level keys other than these (the CWL-style section) are kept in `extra`."""

    model_config = ConfigDict(extra="allow")
    datasets: dict[Name, Dataset] = Field(default_factory=dict)
    steps: list[dict[Name, Step]] = Field(min_length=1)
    resources: Resources | None = None  # every step's default


@dataclass(frozen=True)
class StepSpec:
    """One step, resolved: absolute paths and its place in the file."""

    name: str
    at: str  # LINE:COLUMN of its name in the file
    command: str
    inputs: tuple[str, ...]
    output: str | None
    env: Env
    env_file: Path | None
    sources: tuple[Path, ...]  # env.source: local package directories and wheel files
    params: dict[str, Any]
    gpus: str | int | list[int] | None
    limits: Limits = Limits()
    retries: int = 0
    slurm: Slurm | None = None
    depends: list[str] | None = None  # globs of project files the step reads (default: the whole project)
    sweep: Sweep | None = None  # a sweep's own step: it picks the best of its points once they end
    points: tuple[Point, ...] = ()  # (a sweep's own step) its points, each a step named NAME.SLUG
    parent: str | None = None  # (a point) its sweep's step
    point: Point | None = None  # (a point) its values and folder
    after: tuple[str, ...] = ()  # (a trial of an adaptive search) the trials it is asked after: the wave before
    allow_empty_output: bool = False


@dataclass
class Workflow:
    path: Path
    root: Path
    datasets: dict[str, Path]
    steps: list[StepSpec]  # in dependency order (file order where free)
    extra: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> StepSpec:
        for s in self.steps:
            if s.name == name:
                return s
        raise UsageError(f"no step named {name!r} in {self.path}")

    def edges(self) -> list[tuple[str, str, str]]:
        """(writer, reader, dataset) of every edge of the DAG; a sweep's points lead to its own step through their
        folders (DATASET/POINT)."""
        by = writers(self.steps)
        return [*((f"{s.name}.{p.slug}", s.name, f"{s.output}/{p.slug}") for s in self.steps for p in s.points),
                *((by[d], s.name, d) for s in self.steps if not s.points for d in s.inputs if d in by)]

    def output_dir(self, step: StepSpec) -> Path | None:
        """Where the step writes: its output dataset, or a point's own folder in it."""
        if not step.output:
            return None
        return self.datasets[step.output] / step.point.slug if step.point else self.datasets[step.output]

    def argv(self, step: StepSpec) -> list[str]:
        """The prototype's contract: CMD --input IN… --output OUT --key value…; no shell."""
        argv = shlex.split(step.command)
        for name in step.inputs:
            argv += ["--input", str(self.datasets[name])]
        if step.output:
            argv += ["--output", str(self.output_dir(step))]
        for key, value in step.params.items():
            for v in value if isinstance(value, list) else [value]:
                if v is None or v is False:
                    continue
                argv += [f"--{key}"] if v is True else [f"--{key}", str(v)]
        return argv


# ---------------------------------------------------------------- loading


def load(path: str | Path, root: str | Path | None = None, allowed_mounts: list[str] | tuple[str, ...] = (),
         max_points: int | None = None, guarded: tuple[tuple[Path, str], ...] = ()) -> Workflow:
    """Parse and validate a workflow file; raise ValidationError with every problem found (a dataset the mount
    policy refuses included, unless `allowed_mounts` names it; a sweep of more than `max_points` points). `guarded`:
    the paths the engines guard (runner.engines.guarded()), refused with the system's."""
    path = Path(path)
    fname = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{fname}: no such workflow file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{fname}: cannot read workflow file: {exc}") from None
    data, lines = compose(text, fname)
    if data is None:
        raise ValidationError([f"{fname}:1:1: the file is empty: a workflow is a mapping with 'datasets' and 'steps'"])
    if not isinstance(data, dict):
        raise ValidationError([f"{fname}:1:1: top: a workflow is a mapping with 'datasets' and 'steps'"])
    control = control_characters(data, lines, fname)
    if control:
        raise ValidationError(control)
    try:
        wf = WorkflowFile.model_validate(data)
    except PydanticError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not union_tag(p))
            msg = short(err)
            if len(loc) >= 5 and loc[0] == "steps" and loc[3] == "params" and err["type"] != "missing":
                loc, msg = loc[:5], "a param is a scalar (text, number, true/false) or a list of scalars"
            if err["type"] == "extra_forbidden":
                msg += closest(str(loc[-1]), _fields_at(loc[:-1]))
            problems.append(f"{fname}:{where(lines, loc)}: {dotted(loc) or 'top'}: {msg}")
        raise ValidationError(sorted(set(problems), key=by_line)) from None
    root = Path(root).resolve() if root else Path.cwd().resolve()
    refuse = functools.partial(mount_problem, allowed=allowed_mounts, guarded=guarded)
    return _resolve(wf, path, root, lines, refuse, max_points or MAX_POINTS)


def _fields_at(loc: tuple) -> list[str]:
    """The field names the workflow file allows where `loc` points (a step, its env, a dataset, ...)."""
    if loc[:1] == ("datasets",):
        return list(Dataset.model_fields)
    if loc[:1] == ("resources",):
        return list(Resources.model_fields)
    if loc[:1] == ("steps",) and len(loc) >= 3:
        sub = {"env": Env, "slurm": Slurm, "resources": Resources, "sweep": Sweep}.get(str(loc[3])) if len(loc) > 3 else Step
        return list(sub.model_fields) if sub else []
    return list(WorkflowFile.model_fields)


Problem = Callable[[tuple, str], None]  # says what is wrong at a location of the file


def _resolve(wf: WorkflowFile, path: Path, root: Path, lines: Lines, refuse: Callable[[Path], str | None],
             max_points: int | None = None) -> Workflow:
    fname = str(path)
    problems: list[str] = []

    def problem(loc: tuple, msg: str) -> None:
        problems.append(f"{fname}:{where(lines, loc)}: {dotted(loc)}: {msg}")

    here_dir = path.resolve().parent
    # relative paths resolve against the current directory (the prototype's rule): say so when the file is elsewhere
    elsewhere = (f"; relative paths resolve against the current directory {root}, and the workflow file is in "
                 f"{here_dir}: cd there, or pass --root {here_dir}") if here_dir != root else ""
    datasets = _datasets(wf, root, refuse, problem)
    steps: list[StepSpec] = []
    writers: dict[str, str] = {}
    seen: dict[str, int] = {}
    sweeps = {n for item in wf.steps for n, s in item.items() if s.sweep}
    for i, item in enumerate(wf.steps):
        if len(item) != 1:
            problem(("steps", i), "each step is a one-key map: '- NAME: {command: ...}'")
            continue
        (name, step), = item.items()
        here = ("steps", i, name)
        if name in seen or any(name.startswith(f"{w}.") for w in sweeps):
            problem(here, f"duplicate step name (first at line {seen[name]})" if name in seen else
                          f"a step named NAME.X is a point of sweep NAME: rename {name!r}")
        seen.setdefault(name, line_of(lines, here))
        inputs = (step.input,) if isinstance(step.input, str) else tuple(step.input or ())
        for ds in inputs:
            if ds not in datasets and ds not in wf.datasets:
                problem(here + ("input",), f"unknown dataset {ds!r}{closest(ds, wf.datasets)}")
        if step.output:
            if step.output not in wf.datasets:
                problem(here + ("output",), f"unknown dataset {step.output!r}{closest(step.output, wf.datasets)}")
            elif step.output in writers:
                problem(here + ("output",), f"dataset {step.output!r} is also written by step {writers[step.output]!r}")
            else:
                writers[step.output] = name
            if step.output in inputs:
                problem(here + ("output",), f"step reads and writes the same dataset {step.output!r}")
        steps += _step(wf, name, step, here, inputs, root, elsewhere, lines, max_points, problem)
    if not problems:
        ordered = _order(steps)
        if isinstance(ordered, str):
            problem(("steps",), ordered)
        else:
            steps = ordered
    if problems:
        raise ValidationError(sorted(problems, key=by_line))
    extra = dict(wf.model_extra or {})
    return Workflow(path=path.resolve(), root=root, datasets=datasets, steps=steps, extra=extra)


def _datasets(wf: WorkflowFile, root: Path, refuse: Callable[[Path], str | None], problem: Problem) -> dict[str, Path]:
    """Each dataset's absolute path: never the project or above it, nowhere the mount policy refuses, never a
    file, never overlapping another."""

    datasets: dict[str, Path] = {}
    for name, ds in wf.datasets.items():
        loc = Path(ds.location).expanduser()
        full = Path(root, loc).resolve() if not loc.is_absolute() else loc.resolve()
        if full == Path("/") or full == root or full in root.parents:
            problem(("datasets", name, "location"), f"{ds.location!r} would expose {full} read-write; use a directory of its own")
            continue
        refused = refuse(full)
        if refused:
            problem(("datasets", name, "location"), f"refused: {refused} (itwin-run --allow-mount PATH allows it)")
            continue
        if full.exists() and not full.is_dir():
            problem(("datasets", name, "location"), f"{full} is a file: a dataset is a directory")
            continue
        for other, other_path in datasets.items():
            if under(full, other_path) or under(other_path, full):
                problem(("datasets", name, "location"), f"overlaps dataset {other!r} ({other_path})")
        datasets[name] = full
    return datasets


def _step(wf: WorkflowFile, name: str, step: Step, here: tuple, inputs: tuple[str, ...], root: Path, elsewhere: str,
          lines: Lines, max_points: int | None, problem: Problem) -> list[StepSpec]:
    """A step of the file as it runs: its env file and sources found, its resources over the file's defaults;
    a sweep as its points and its own step."""
    env = step.env or Env()
    env_file, sources = _env(env, here, root, elsewhere, problem)
    own, default = step.resources or Resources(), wf.resources or Resources()
    if step.gpus is not None and own.gpus is not None:
        problem(here + ("resources", "gpus"), "gpus given twice (gpus and resources.gpus): keep one")
    gpus = next((g for g in (step.gpus, own.gpus, default.gpus) if g is not None), None)
    limits = Limits(cpus=own.cpus or default.cpus, memory=own.memory or default.memory,
                    time=own.time or default.time)
    spec = StepSpec(name=name, at=where(lines, here), command=step.command, inputs=inputs,
                    output=step.output, env=env, env_file=env_file, sources=tuple(sources),
                    params=step.params or {}, gpus=gpus, limits=limits, retries=step.retries,
                    slurm=step.slurm, depends=step.depends, allow_empty_output=step.allow_empty_output)
    try:
        shlex.split(step.command)
    except ValueError as exc:
        problem(here + ("command",), f"cannot split command: {exc}")
    if not step.sweep:
        return [spec]
    for loc, msg in check(step.sweep, spec.params, max_points):
        problem(here + ("sweep", *loc), msg)
    if not step.output:
        problem(here + ("sweep",), "a sweep needs an output dataset: each point writes a folder in it")
    pts = tuple(points(step.sweep))
    wave = step.sweep.wave if step.sweep.optuna else len(pts)  # a trial is asked once the wave before it ended
    return [*(replace(spec, name=f"{name}.{p.slug}", params={**spec.params, **p.values}, parent=name, point=p,
                      after=tuple(f"{name}.{q.slug}" for q in pts[max(0, i // wave * wave - wave):i // wave * wave]))
              for i, p in enumerate(pts)), replace(spec, sweep=step.sweep, points=pts)]


def _env(env: Env, here: tuple, root: Path, elsewhere: str, problem: Problem) -> tuple[Path | None, list[Path]]:
    """The env file and the sources (package folders or wheels) a step names, found under the project root."""
    env_file = None
    sources: list[Path] = []
    if env.file and env.image:
        problem(here + ("env",), "give either 'file' or 'image', not both")
    if env.file:
        env_file = (root / env.file).resolve()
        if not env_file.is_file():
            problem(here + ("env", "file"), f"env file not found: {env.file} (looked in {env_file}){elsewhere}")
    elif not env.image:
        problem(here + ("env",), "needs 'file' (requirements.txt, environment.yml, Dockerfile) or 'image'")
    for i, item in enumerate([env.source] if isinstance(env.source, str) else env.source or []):
        where = here + (("env", "source") if isinstance(env.source, str) else ("env", "source", i))
        source = (root / item).resolve()
        if source.is_file() and source.suffix == ".whl":
            sources.append(source)
        elif not source.is_dir():
            problem(where, f"source not found: {item} (looked in {source}; a package directory or a .whl file)"
                           f"{elsewhere}")
        elif not any((source / f).is_file() for f in ("pyproject.toml", "setup.py", "setup.cfg")):
            problem(where, f"{item}: not a Python package directory (no pyproject.toml or setup.py in {source})")
        else:
            sources.append(source)
    return env_file, sources


def _order(steps: list[StepSpec]) -> list[StepSpec] | str:
    """Topological order from datasets (reader after writer), file order where free; or a cycle message."""
    deps = needs(steps)
    done: list[StepSpec] = []
    placed: set[str] = set()
    pending = list(steps)
    while pending:
        ready = next((s for s in pending if deps[s.name] <= placed), None)
        if ready is None:
            cycle = " -> ".join(s.name for s in pending)
            return f"steps form a cycle through their datasets: {cycle}"
        done.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    return done


def writers(steps: list[StepSpec]) -> dict[str, str]:
    """Dataset -> the step that writes it (a sweep's own step writes its dataset, after its points)."""
    return {s.output: s.name for s in steps if s.output and not s.parent}


def needs(steps: list[StepSpec]) -> dict[str, set[str]]:
    """Step name -> the steps that write its inputs (a sweep: its points)."""
    by = writers(steps)
    return {s.name: {by[d] for d in s.inputs if d in by} | {f"{s.name}.{p.slug}" for p in s.points} for s in steps}


def dependencies(wf: Workflow) -> dict[str, set[str]]:
    """Step name -> names of the steps it runs after: the writers of its inputs (a sweep: its points)."""
    return needs(wf.steps)


def schema() -> dict[str, Any]:
    return WorkflowFile.model_json_schema()
