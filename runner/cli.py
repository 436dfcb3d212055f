"""The `itwin-run` command line: a thin typer layer over the workflow model, engines and executor."""


import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from runner import flags, ui
from runner.errors import EXIT_CODES, UsageError
from runner.flags import (
    DEFAULT_ENGINE,
    AllowOpt,
    ConsOpt,
    EngineOpt,
    ImagesOpt,
    ParentOpt,
    PullOpt,
    RootOpt,
    VerboseOpt,
    WheelOpt,
    WorkflowArg,
)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
SUBCOMMANDS = {"run", "build", "schema", "base", "export-cwl", "load", "validate", "history", "show", "status", "crate",
               "init", "doctor", "report", "dag", "images", "prune", "--help", "-h", "--version",
               "--install-completion", "--show-completion"}

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"itwin-run {version('itwin-run')}")
        raise typer.Exit()


@app.callback(help="Run AI/ML digital-twin workflows step by step in containers. `itwin-run [OPTIONS] WORKFLOW.yml` "
                   "is `itwin-run run [OPTIONS] WORKFLOW.yml`.\n\nExit codes: " + "; ".join(
                       f"{code} {when.split(':')[0]}" for code, when in EXIT_CODES) + ".")
def _top(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    pass


@app.command()
@flags.without_settings
def run(
    workflow: WorkflowArg,
    engine: EngineOpt = None,
    site: flags.SiteOpt = None,
    root: RootOpt = None,
    user: Annotated[str | None, typer.Option(help="uid:gid the steps run as (default: yours; as root, the project's "
                                                  "owner or nobody; 0:0 for root).")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs for every step: all, a count, or ids (0,1).")] = None,
    cpus: Annotated[float | None, typer.Option(min=0.01, help="CPUs each step may use (over resources.cpus).",
                                               show_default=False)] = None,
    memory: Annotated[str | None, typer.Option(help="Memory each step may use: 512M, 2G (over resources.memory).",
                                               show_default=False)] = None,
    retries: Annotated[int | None, typer.Option(min=0, help="Run a failed step again up to N times (over each "
                                                            "step's retries).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Print the plan: each step `run (why)` or `up "
                                                                  "to date`, then images, argv, mounts; run nothing.")] = False,
    cwl: Annotated[bool, typer.Option("--cwl", help="Run the file's workflowFileCWL with cwltool in the step images "
                                                   "(the cwl executor).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Independent steps run at once.")] = 1,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run just this step (repeatable).")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Run this step and everything downstream.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Run this step and everything upstream.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every step, up to date or not.")] = False,
    force_step: Annotated[list[str] | None, typer.Option("--force-step", help="Rerun this step (repeatable).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="After a failure, let independent steps "
                                                                  "finish (default: stop them).")] = False,
    allow_mount: AllowOpt = None,
    max_points: flags.MaxPointsOpt = None,
    images: ImagesOpt = None,
    pull: PullOpt = "missing",
    executor_: flags.ExecutorOpt = None,
    wheelhouse: WheelOpt = None,
    constraints: ConsOpt = None,
    base_parent: ParentOpt = None,
    verbose: VerboseOpt = False,
    **settings: Any,  # each executor's own flags (flags.executor_flags)
) -> None:
    """Build (when needed) each step's image and run the steps in containers; steps whose image, argv, env, inputs
    and project files are unchanged since they last succeeded (and whose output is intact) are skipped."""
    from runner import session
    from runner import workflow as wfmod
    from runner.engines import get_runner, guarded
    from runner.executors import Common, get_executor
    from runner.images import BuildOptions, read_pins

    if cwl and executor_ not in (None, "local", "cwl"):
        raise UsageError(f"--cwl runs the workflow with cwltool on this machine: it does not combine with "
                         f"--executor {executor_}")
    profile = flags.site(site, root)
    engine, executor_ = engine or profile.engine or DEFAULT_ENGINE, "cwl" if cwl else executor_ or profile.executor
    own = flags.own_settings(executor_ or "local", settings, profile)
    if memory is not None and not re.match(wfmod.MEMORY, memory):
        raise UsageError(f"--memory {memory}: a size such as 512M or 2G")
    wf = flags.workflow(workflow, root, allow_mount, max_points)
    opts = session.RunOptions(user=user, gpus=flags.gpus(gpus), cpus=cpus, memory=memory, retries=retries,
                              build=BuildOptions.from_env(wheelhouse, constraints, pull),
                              pinned=read_pins(images) if images else None, jobs=jobs, only=only or [],
                              from_=from_, until=until, force=[] if force else (force_step or None),
                              keep_going=keep_going, dry_run=dry_run, allowed_mounts=allow_mount or [],
                              binds=profile.folders(guarded()), site=profile.name)
    runner = get_runner(engine)
    executor = get_executor(executor_ or "local", Common(runner, wf, jobs, keep_going, flags.confirm), own)
    session.RunSession(wf, flags.builder(engine, base_parent, verbose), runner, executor, opts).run()


@app.command()
def build(
    workflow: WorkflowArg,
    engine: EngineOpt = None,
    site: flags.SiteOpt = None,
    root: RootOpt = None,
    push: Annotated[bool, typer.Option("--push", help="Push every step image to --registry and write an image pin "
                                                      "file.")] = False,
    registry: Annotated[str | None, typer.Option(help="HOST[:PORT]/NAMESPACE to push to.")] = None,
    pins: Annotated[Path | None, typer.Option("--pins", help="Image pin file to write (default: WORKFLOW.images.json "
                                                             "beside it).")] = None,
    save: Annotated[Path | None, typer.Option(help="Write the images (or their files: SIFs) into DIR.")] = None,
    allow_mount: AllowOpt = None,
    max_points: flags.MaxPointsOpt = None,
    pull: PullOpt = "missing",
    wheelhouse: WheelOpt = None,
    constraints: ConsOpt = None,
    base_parent: ParentOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Build the step images only (and push them, writing an image pin file, with --push)."""
    from runner import plan
    from runner.images import BuildOptions

    profile = flags.site(site, root)
    engine, registry = engine or profile.engine or DEFAULT_ENGINE, registry or profile.registry
    wf = flags.workflow(workflow, root, allow_mount, max_points)
    if push and not registry:
        raise UsageError("--push needs --registry HOST[:PORT]/NAMESPACE (or a site profile's registry)")
    builder = flags.builder(engine, base_parent, verbose)
    opts = BuildOptions.from_env(wheelhouse, constraints, pull)
    refs = {k: ref for k, (ref, _) in plan.resolve_images(wf, builder, opts).items()}
    shown = plan.push(wf, builder, refs, registry, pins) if push and registry else refs
    if save:
        plan.save(wf, builder, refs, save)
    for step, ref in shown.items():
        print(f"{step}\t{ref}")


@app.command("export-cwl")
def export_cwl(
    workflow: WorkflowArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for workflow.cwl and one tool per step.")],
    root: RootOpt = None,
    engine: EngineOpt = DEFAULT_ENGINE,
    wheelhouse: WheelOpt = None,
    constraints: ConsOpt = None,
    base_parent: ParentOpt = None,
) -> None:
    """Write a CWL v1.2 Workflow + one CommandLineTool per step (DockerRequirement with the step image)."""
    from runner import cwl, plan
    from runner.engines import oci_builder
    from runner.images import BuildOptions

    builder = oci_builder(engine, "a CWL tool", parent=base_parent, verbose=False)
    wf = flags.workflow(workflow, root)
    images = {k: ref for k, (ref, _) in plan.resolve_images(wf, builder, BuildOptions.from_env(wheelhouse, constraints)).items()}
    for path in cwl.export(wf, images, output):
        print(path)


@app.command()
def load(
    directory: Annotated[Path, typer.Argument(help="Directory written by `itwin-run build --save`.")],
    engine: EngineOpt = DEFAULT_ENGINE,
) -> None:
    """Load image archives (Docker) or SIFs (Apptainer) saved by `build --save`, for sites with no registry."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory")
    for ref in flags.builder(engine).load(directory):
        print(ref)


@app.command()
def base(
    engine: EngineOpt = DEFAULT_ENGINE,
    base_parent: ParentOpt = None,
    bootstrap: Annotated[bool, typer.Option(help="Bootstrap the parent offline (debootstrap) when it is missing.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build the project base image (Dockerfile.base)."""
    print(flags.builder(engine, base_parent, verbose).base(bootstrap=bootstrap))


@app.command()
def validate(workflow: WorkflowArg, root: RootOpt = None, allow_mount: AllowOpt = None,
             max_points: flags.MaxPointsOpt = None, engine: EngineOpt = None, site: flags.SiteOpt = None) -> None:
    """Check a workflow file, its env files and its datasets (the mount policy, what the steps can read and write),
    and the site profile; print nothing and exit 0 when all is well."""
    from runner import plan
    from runner.engines import get_runner, guarded

    profile = flags.site(site, root)
    engine = engine or profile.engine or DEFAULT_ENGINE
    profile.folders(guarded())
    wf = flags.workflow(workflow, root, allow_mount, max_points)
    plan.image_specs(wf)
    plan.check_inputs(wf, wf.steps)  # what a run of the whole workflow would refuse
    plan.check_access(wf, wf.steps, get_runner(engine).default_user(wf.root))


@app.command()
def history(root: RootOpt = None) -> None:
    """List the runs recorded in this project's .itwin-run/, oldest first."""
    from runner import history as records

    records.table((root or Path.cwd()).resolve())


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="A run id (or its start) from `itwin-run history`.")],
         root: RootOpt = None) -> None:
    """Print one run's provenance manifest (JSON, times in ISO 8601): per step its image, engine, argv, mounts,
    times, exit code."""
    from runner import history as records

    records.show((root or Path.cwd()).resolve(), run_id)


@app.command()
def report(
    run_id: flags.RunArg = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write it (default: "
                                                                      ".itwin-run/runs/RUN/report.html).",
                                                show_default=False)] = None,
    root: RootOpt = None,
) -> None:
    """Write a run's report: one self-contained HTML page (the DAG, a timeline, per step its status, duration, CPU,
    peak memory against its limit, image, attempts, logs and MLflow run); it opens without a network."""
    from runner import report as rep

    dest = rep.write((root or Path.cwd()).resolve(), run_id, output)
    print(dest)


@app.command()
def crate(run_id: flags.RunArg = None, root: RootOpt = None,
          output: Annotated[Path, typer.Option("-o", "--output", help="A new folder, or FILE.zip.")] = Path("crate"),
          include_data: Annotated[bool, typer.Option(help="Copy the datasets into the crate (default: refer to "
                                                          "them by file: URI).")] = False) -> None:
    """Write a run as a Workflow Run RO-Crate (Provenance Run Crate profile) for WorkflowHub and runcrate."""
    from runner.crate import write

    write((root or Path.cwd()).resolve(), run_id, output, include_data)


@app.command()
def dag(
    workflow: WorkflowArg,
    fmt: Annotated[str, typer.Option("--format", help="dot (Graphviz), mermaid, or svg (drawn here, no Graphviz "
                                                      "needed).")] = "dot",
    root: RootOpt = None,
) -> None:
    """Print the workflow's steps and the datasets between them as a graph."""
    from runner import report as rep

    sys.stdout.write(rep.graph(workflow, root, fmt))


@app.command()
def images(root: RootOpt = None,
           everything: Annotated[bool, typer.Option("--all", help="Also what only other projects name.")] = False,
           ) -> None:
    """List the images and SIFs itwin-run made that this project's step records or pin files name, and those
    nothing names (what `prune` removes): size, last use, and what names them."""
    from runner import inventory

    inventory.listing((root or Path.cwd()).resolve(), everything)


@app.command()
def prune(
    older_than: Annotated[float | None, typer.Option("--older-than", min=0, help="Also remove what was not used "
                                                     "for this many days.",
                                                     show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
    everything: Annotated[bool, typer.Option("--all", help="Everything itwin-run made (the base image "
                                                           "included), but what a container uses.")] = False,
    root: RootOpt = None,
) -> None:
    """Remove images and SIFs itwin-run made that no step record or pin file of this project names (and, with
    --older-than, what was not used for N days). Never an image a container uses, nor one itwin-run did not make."""
    from runner import inventory

    inventory.prune((root or Path.cwd()).resolve(), older_than, dry_run, everything)


@app.command("status")
def status_(run_id: flags.RunArg = None, root: RootOpt = None) -> None:
    """The state of each step of a run, as its executor knows it now (SLURM: squeue, then sacct)."""
    from runner import history as records

    records.status((root or Path.cwd()).resolve(), run_id)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to start the project (default: here); empty or new.")] = Path("."),
    template: Annotated[str, typer.Option(help="basic: two plain Python steps. ml: a data step and an itwinai "
                                               "training step (a tiny Lightning model, tracked in MLflow).")] = "basic",
    itwinai: Annotated[Path | None, typer.Option(help="ml: the itwinai wheel, or the itwinai directory of an "
                                                      "itwin-run checkout to build it from (default: this "
                                                      "checkout's, when itwin-run runs from one).")] = None,
) -> None:
    """Start a project: a two-step workflow, an env file per step, the step scripts, a .gitignore and a README that
    runs at once with `itwin-run workflow.yml`. Writes nothing into a folder that holds anything."""
    from runner import scaffold

    scaffold.create(directory, template, itwinai)


@app.command()
def doctor(
    workflow: Annotated[Path | None, typer.Argument(help="A workflow: check what it needs (its GPUs, its registries).",
                                                     show_default=False)] = None,
    engine: EngineOpt = None,
    executor_: flags.ExecutorOpt = None,
    site: flags.SiteOpt = None,
    root: RootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
) -> None:
    """Check what this machine offers (Docker, the NVIDIA runtime, Apptainer, SLURM, disk, registries, the
    wheelhouse, the site profile), one line each with what to do about a gap; exit 0 when what the run needs is
    usable, else 3."""
    from runner import doctor as doc

    profile = flags.site(site, root)
    engine, executor_ = engine or profile.engine or DEFAULT_ENGINE, executor_ or profile.executor or "local"
    if not doc.check(workflow, root, engine, executor_, as_json, profile):
        raise typer.Exit(3)


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
    if args[:1] == ["run"]:
        flags.executor_flags(run)
    with flags.reported(args, SUBCOMMANDS):
        code = app(args, standalone_mode=False, prog_name="itwin-run")
        if isinstance(code, int) and code:  # typer turns Ctrl-C into exit code 130 when not standalone
            if code == 130:
                ui.say("interrupted", "red")
            sys.exit(code)


def entry() -> None:
    """The `itwin-run` command: main(), then out without tearing the interpreter down (freeing every module and
    object costs a short run about a tenth of a second; atexit handlers still run and stdio is flushed)."""
    import atexit

    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
