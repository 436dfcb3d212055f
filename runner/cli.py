"""The `itwin-run` command line: a thin typer layer over the workflow model, engines and executor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from runner import ui
from runner.errors import StepFailed, UserError, ValidationError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run AI/ML digital-twin workflows step by step in containers.")
SUBCOMMANDS = {"run", "build", "schema", "base", "export-cwl", "load", "validate", "history", "show", "status",
               "--help", "-h", "--version"}

WorkflowArg = Annotated[Path, typer.Argument(help="Workflow YAML (the prototype's format).", show_default=False)]
EngineOpt = Annotated[str, typer.Option("--engine", "-e", help="Container engine: docker or apptainer.")]
RootOpt = Annotated[Path | None, typer.Option(help="Directory relative paths resolve against (default: the current one).")]
WheelOpt = Annotated[str | None, typer.Option(help="Directory of wheels pip may use in image builds (or ITWIN_RUN_WHEELHOUSE).")]
ConsOpt = Annotated[str | None, typer.Option(help="pip constraints file for image builds (or ITWIN_RUN_CONSTRAINTS).")]
ParentOpt = Annotated[str | None, typer.Option("--base-parent", help="Parent of the base image (default python:3.11-slim, "
                                                  "else the offline-bootstrapped one; or ITWIN_RUN_BASE_PARENT).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show full build output.")]
PullOpt = Annotated[str, typer.Option("--pull", help="Prebuilt images: pull when missing, always, or never.")]
ImagesOpt = Annotated[Path | None, typer.Option("--images", help="Lock file from `build --push`: run exactly these images.")]


def _gpus(value: str | None) -> str | int | list[int] | None:
    if value is None:
        return None
    if value == "all":
        return "all"
    if value.isdigit():
        return int(value)
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--gpus: expected 'all', a count or device ids like 0,1; got {value!r}") from None


def _engine(name: str, parent: str | None = None, verbose: bool = False):
    from runner.engines import get_engine

    return get_engine(name, parent=parent, verbose=verbose)


@app.command()
def run(
    workflow: WorkflowArg,
    engine: EngineOpt = "docker",
    root: RootOpt = None,
    user: Annotated[str | None, typer.Option(help="uid:gid the steps run as (default: yours).")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs for every step: all, a count, or ids (0,1).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (images, argv, mounts); run nothing.")] = False,
    cwl: Annotated[bool, typer.Option("--cwl", help="Run the file's workflowFileCWL with cwltool in the step images.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Independent steps run at once.")] = 1,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run just this step (repeatable).")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Run this step and everything downstream.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Run this step and everything upstream.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every step, up to date or not.")] = False,
    force_step: Annotated[list[str] | None, typer.Option("--force-step", help="Rerun this step (repeatable).")] = None,
    images: ImagesOpt = None,
    pull: PullOpt = "missing",
    executor_: Annotated[str, typer.Option("--executor", help="local, or slurm (one sbatch job per step).")] = "local",
    detach: Annotated[bool, typer.Option(help="slurm: return after submission (`itwin-run status RUN` later).")] = False,
    cancel_on_exit: Annotated[bool, typer.Option(help="slurm: scancel the run's jobs on Ctrl-C.")] = False,
    partition: Annotated[str | None, typer.Option(help="slurm: default partition.")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="slurm: default time limit.")] = None,
    account: Annotated[str | None, typer.Option(help="slurm: default account.")] = None,
    sbatch_arg: Annotated[list[str] | None, typer.Option(help="slurm: extra sbatch option (repeatable).")] = None,
    wheelhouse: WheelOpt = None,
    constraints: ConsOpt = None,
    base_parent: ParentOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Build (when needed) each step's image and run the steps in containers; steps whose inputs, image, argv
    and env are unchanged since they last succeeded (and whose output is intact) are skipped as up to date."""
    from runner import executor
    from runner import workflow as wfmod
    from runner.images import BuildOptions, read_lock

    wf = wfmod.load(workflow, root)
    opts = executor.RunOptions(user=user, gpus=_gpus(gpus), build=BuildOptions.from_env(wheelhouse, constraints, pull),
                               lock=read_lock(images) if images else None, jobs=jobs, only=only or [],
                               from_=from_, until=until, force=[] if force else (force_step or None))
    eng = _engine(engine, base_parent, verbose)
    if executor_ == "slurm":
        from runner.slurm import SlurmExecutor, SlurmOptions

        SlurmExecutor(wf, eng, opts, SlurmOptions(partition=partition, time=time_limit, account=account,
                                                  extra=sbatch_arg or [], detach=detach,
                                                  cancel_on_exit=cancel_on_exit, dry_run=dry_run)).run()
        return
    if executor_ != "local":
        raise UserError(f"--executor: choose local or slurm, not {executor_!r}")
    if dry_run:
        images_ = executor.resolve_images(wf, eng, opts.build, build=False, lock=opts.lock)
        for step in wf.steps:
            ref, present = images_[step.name]
            job = executor.job_for(wf, step, ref, opts, "dry-run")
            print(f"step {step.name}")
            print(f"  image  {ref} ({'present' if present else 'to build'})")
            print(f"  argv   {json.dumps(job.argv)}")
            for m in job.mounts:
                print(f"  mount  {m.source} -> {m.target} ({'ro' if m.read_only else 'rw'})")
            print(f"  user   {job.user}" + (f"  gpus {job.gpus}" if job.gpus else ""))
        return
    if cwl:
        from runner import cwl as cwlmod

        cwlmod.run(wf, eng, opts)
        return
    executor.Runner(wf, eng, opts).run()


@app.command()
def build(
    workflow: WorkflowArg,
    engine: EngineOpt = "docker",
    root: RootOpt = None,
    push: Annotated[bool, typer.Option("--push", help="Push every step image to --registry and write a lock file.")] = False,
    registry: Annotated[str | None, typer.Option(help="HOST[:PORT]/NAMESPACE to push to.")] = None,
    lock: Annotated[Path | None, typer.Option(help="Lock file to write (default: WORKFLOW.lock.json beside it).")] = None,
    save: Annotated[Path | None, typer.Option(help="Write image archives (and SIFs with --engine apptainer) into DIR.")] = None,
    pull: PullOpt = "missing",
    wheelhouse: WheelOpt = None,
    constraints: ConsOpt = None,
    base_parent: ParentOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Build the step images only (and push them, writing a lock file, with --push)."""
    from runner import executor
    from runner import workflow as wfmod
    from runner.images import BuildOptions, write_lock

    wf = wfmod.load(workflow, root)
    if push and not registry:
        raise UserError("--push needs --registry HOST[:PORT]/NAMESPACE")
    eng = _engine("docker" if push else engine, base_parent, verbose)
    opts = BuildOptions.from_env(wheelhouse, constraints, pull)
    refs = {k: ref for k, (ref, _) in executor.resolve_images(wf, eng, opts).items()}
    if push:
        pushed: dict[str, str] = {}
        locked = {}
        for step, ref in refs.items():
            if ref not in pushed:
                name = ref.removeprefix("itwin-run/")
                pushed[ref] = eng.push(ref, f"{registry.rstrip('/')}/{name}")  # type: ignore[attr-defined, union-attr]
            locked[step] = pushed[ref]
        lock = lock or wf.path.with_name(wf.path.stem + ".lock.json")
        write_lock(lock, wf.path, locked)
        ui.say(f"lock file: {lock}")
        refs = locked
    if save:
        save.mkdir(parents=True, exist_ok=True)
        docker_eng = eng if eng.name == "docker" else _engine("docker", base_parent, verbose)
        docker_refs = {k: ref for k, (ref, _) in executor.resolve_images(wf, docker_eng, opts).items()}
        docker_eng.save(list(docker_refs.values()), save)
        if eng.name != "docker":
            eng.save(list(refs.values()), save)
        (save / "images.json").write_text(json.dumps({"workflow": str(wf.path), "images": docker_refs}, indent=2) + "\n")
    for step, ref in refs.items():
        print(f"{step}\t{ref}")


@app.command("export-cwl")
def export_cwl(
    workflow: WorkflowArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for workflow.cwl and one tool per step.")],
    root: RootOpt = None,
    wheelhouse: WheelOpt = None,
    constraints: ConsOpt = None,
    base_parent: ParentOpt = None,
) -> None:
    """Write a CWL v1.2 Workflow + one CommandLineTool per step (DockerRequirement with the step image)."""
    from runner import cwl, executor
    from runner import workflow as wfmod
    from runner.images import BuildOptions

    wf = wfmod.load(workflow, root)
    eng = _engine("docker", base_parent)
    images = {k: ref for k, (ref, _) in executor.resolve_images(wf, eng, BuildOptions.from_env(wheelhouse, constraints)).items()}
    for path in cwl.export(wf, images, output):
        print(path)


@app.command()
def load(
    directory: Annotated[Path, typer.Argument(help="Directory written by `itwin-run build --save`.")],
    engine: EngineOpt = "docker",
) -> None:
    """Load image archives (Docker) or SIFs (Apptainer) saved by `build --save`, for sites with no registry."""
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    eng = _engine(engine)
    for ref in eng.load(directory):
        print(ref)


@app.command()
def base(
    base_parent: ParentOpt = None,
    bootstrap: Annotated[bool, typer.Option(help="Bootstrap the parent offline (debootstrap) when it is missing.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build the project base image (Dockerfile.base)."""
    from runner.engines.docker import BOOTSTRAP_PARENT, DEFAULT_PARENT, DockerEngine

    eng = DockerEngine(parent=base_parent, verbose=verbose)
    if bootstrap and not base_parent:
        if not (eng._image_id(DEFAULT_PARENT) or eng._image_id(BOOTSTRAP_PARENT)):
            try:
                eng.client.images.pull(DEFAULT_PARENT)
            except Exception:
                ui.say(f"{DEFAULT_PARENT} cannot be pulled: bootstrapping a parent offline")
                eng.bootstrap_parent()
    ref, _ = eng.base()
    print(ref)


@app.command()
def validate(workflow: WorkflowArg, root: RootOpt = None) -> None:
    """Check a workflow file and its env files; print nothing and exit 0 when all is well."""
    from runner import executor
    from runner import workflow as wfmod

    executor.image_specs(wfmod.load(workflow, root))


@app.command()
def history(root: RootOpt = None) -> None:
    """List the runs recorded in this project's .itwin-run/."""
    import time as _time

    from runner.state import State

    for m in State((root or Path.cwd()).resolve()).manifests():
        steps = m.get("steps", {})
        counts: dict[str, int] = {}
        for info in steps.values():
            counts[info.get("status", "?")] = counts.get(info.get("status", "?"), 0) + 1
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(m.get("started", 0)))
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"{m['run_id']}  {when}  {m.get('status', '?'):<11}  {m.get('engine', '?'):<9}  "
              f"{Path(m.get('workflow', '?')).name}  ({summary})")


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="A run id (or its start) from `itwin-run history`.")],
         root: RootOpt = None) -> None:
    """Print one run's provenance manifest (JSON): per step its image, engine, argv, mounts, times, exit code."""
    from runner.state import State

    print(json.dumps(State((root or Path.cwd()).resolve()).manifest(run_id), indent=2))


@app.command("status")
def status_(run_id: Annotated[str, typer.Argument(help="A run id from `itwin-run history`.")], root: RootOpt = None) -> None:
    """The SLURM state of each step of a run."""
    from runner.slurm import status as slurm_status

    for name, job_id, state in slurm_status((root or Path.cwd()).resolve(), run_id):
        print(f"{name}\t{job_id}\t{state}")


@app.command()
def schema() -> None:
    """Print the JSON schema of the workflow file format."""
    from runner.workflow import schema as wf_schema

    print(json.dumps(wf_schema(), indent=2))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # `itwin-run [options] workflow.yml` is `itwin-run run …`: insert the default command.
    if args and args[0] not in SUBCOMMANDS:
        args.insert(0, "run")
    try:
        code = app(args, standalone_mode=False, prog_name="itwin-run")
        if isinstance(code, int) and code:  # typer turns Ctrl-C into exit code 130 when not standalone
            if code == 130:
                ui.say("interrupted", "red")
            sys.exit(code)
    except ValidationError as exc:
        for p in exc.problems:
            ui.say(p)
        sys.exit(2)
    except StepFailed as exc:
        ui.say(f" {exc}", "red", prefix="error:")
        for line in exc.tail:
            ui.say(f"  {exc.step} | {line}")
        sys.exit(exc.exit_code)
    except UserError as exc:
        ui.say(f" {exc}", "red", prefix="error:")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        ui.say("interrupted", "red")
        sys.exit(130)
    except Exception as exc:
        from runner.executor import Interrupted

        if isinstance(exc, Interrupted):
            ui.say("interrupted: the interrupted steps are not marked complete", "red")
            sys.exit(exc.code)
        _usage_error(exc)


def _usage_error(exc: Exception) -> None:
    """typer's (vendored) click reports usage problems as exceptions that know how to show themselves."""
    if type(exc).__name__ == "Abort":
        sys.exit(130)
    if callable(getattr(exc, "show", None)) and hasattr(exc, "exit_code"):
        if type(exc).__name__ != "NoArgsIsHelpError":  # the help text was shown already
            exc.show()
        sys.exit(exc.exit_code)
    raise exc
