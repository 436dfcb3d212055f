"""The command line's shared flags (typer's Annotated types), what parses them, and its usage errors in
itwin-run's voice."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from runner import ui
from runner.errors import UsageError

WorkflowArg = Annotated[Path, typer.Argument(help="Workflow YAML (the prototype's format).", show_default=False)]
DEFAULT_ENGINE = "docker"
EngineOpt = Annotated[str | None, typer.Option("--engine", "-e", help=f"Container engine: {DEFAULT_ENGINE} (the "
                                                                       "default) or another installed one; "
                                                                       "`itwin-run doctor` checks each.")]
SiteOpt = Annotated[str | None, typer.Option("--site", envvar="ITWIN_RUN_SITE", show_default=False, help=(
    "Site profile: sites/NAME.yml in the project, else in ~/.config/itwin-run/sites/ (or a path): the engine, the "
    "executor and its defaults, itwin-run's environment, folders every step gets, the registry."))]
RootOpt = Annotated[Path | None, typer.Option(help="Directory relative paths resolve against (default: the current one).")]
WheelOpt = Annotated[str | None, typer.Option(help="Directory of wheels pip may use in image builds (or ITWIN_RUN_WHEELHOUSE).")]
ConsOpt = Annotated[str | None, typer.Option(help="pip constraints file for image builds (or ITWIN_RUN_CONSTRAINTS).")]
ParentOpt = Annotated[str | None, typer.Option("--base-parent", help="Parent of the base image (default python:3.11-slim, "
                                                  "else the offline-bootstrapped one; or ITWIN_RUN_BASE_PARENT).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show full build output.")]
RunArg = Annotated[str | None, typer.Argument(help="A run id from `itwin-run history` (default: the latest).",
                                             show_default=False)]
MaxPointsOpt = Annotated[int | None, typer.Option("--max-points", min=1, help="Most points a sweep may have "
                                                                                 "(default: 100).")]
ExecutorOpt = Annotated[str | None, typer.Option("--executor", help="Where the steps run: local (the default) or another "
                                                             "installed executor; flags marked NAME: are its own.")]
PullOpt = Annotated[str, typer.Option("--pull", help="Prebuilt images: pull when missing, always, or never.")]
ImagesOpt = Annotated[Path | None, typer.Option("--images", help="Image pin file from `build --push`: run exactly "
                                                                  "these images.")]


def gpus(value: str | None) -> str | int | list[int] | None:
    if value is None:
        return None
    if value == "all":
        return "all"
    if value.isdigit():
        return int(value)
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"--gpus: expected 'all', a count or device ids like 0,1; got {value!r}") from None


def builder(name: str, parent: str | None = None, verbose: bool = False):
    from runner.engines import get_builder

    return get_builder(name, parent=parent, verbose=verbose)


def workflow(path: Path, root: Path | None, allow_mount: list[str] | None = None, max_points: int | None = None):
    """The workflow file, loaded and checked, its datasets by the mount policy with what the engines guard."""
    from runner import workflow as wfmod
    from runner.engines import guarded

    return wfmod.load(path, root, allowed_mounts=allow_mount or [], max_points=max_points, guarded=guarded())


def site(name: str | None, root: Path | None):
    """The site profile `name` (none: an empty one), checked, with its environment applied."""
    from runner import site as profile

    if not name:
        return profile.Site()
    from runner.executors import available, settings

    own = settings()
    fields = {name: get_type_hints(own[name]) if name in own else {} for name in available()}
    found = profile.load(name, (root or Path.cwd()).resolve(), fields)
    found.apply()
    return found


def own_settings(executor: str, given: dict[str, Any], profile) -> dict[str, Any]:
    """The executor's settings: what the command line gives, over the site profile's section for it."""
    mine, defaults = executor_settings(executor, given), profile.settings(executor)
    return {**defaults, **{k: v for k, v in mine.items() if not (v is False and k in defaults)}}  # a flag not given


AllowOpt = Annotated[list[str] | None, typer.Option(
    "--allow-mount", help="Allow a dataset at or under PATH that the mount policy refuses (repeatable; recorded).")]


@contextlib.contextmanager
def reported(args: list[str], commands: set[str]) -> Iterator[None]:
    """What goes wrong in a command, said in one line each (no traceback), with its exit code."""
    from runner.errors import Interrupted, StepFailed, UserError, ValidationError

    try:
        yield
    except ValidationError as exc:
        for p in exc.problems:
            ui.error(p)
        sys.exit(2)
    except StepFailed as exc:
        ui.error(str(exc))
        for line in exc.tail:
            ui.say(f"  {exc.step} | {line}")
        sys.exit(exc.exit_code)
    except UserError as exc:
        ui.error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        ui.say("interrupted", "red")
        sys.exit(130)
    except Interrupted as exc:
        ui.say("interrupted: the interrupted steps are not marked complete", "red")
        sys.exit(exc.code)
    except Exception as exc:
        usage_error(exc, args, commands)


def usage_error(exc: Exception, args: list[str], commands: set[str]) -> None:
    """typer's (vendored) click reports usage problems as exceptions: said in itwin-run's voice, one line with where
    to look (or, for a command given after options, the order to give it in)."""
    if type(exc).__name__ == "Abort":
        sys.exit(130)
    if callable(getattr(exc, "show", None)) and hasattr(exc, "exit_code"):
        if type(exc).__name__ != "NoArgsIsHelpError":  # the help text was shown already
            ctx = getattr(exc, "ctx", None)
            where = f"itwin-run {ctx.info_name} --help" if ctx is not None and ctx.info_name else "itwin-run --help"
            late = next((a for a in args[1:] if a in commands and not a.startswith("-")), None)
            hint = (f"the command comes first: `itwin-run {late} [OPTIONS] ...`" if args[:1] == ["run"] and late
                    and late != "run" else f"see `{where}`")
            message = exc.format_message() if callable(getattr(exc, "format_message", None)) else str(exc)
            ui.error(f"{message.rstrip('.')}; {hint}")
        sys.exit(exc.exit_code)
    raise exc


def confirm(question: str) -> bool:
    """A yes/no question to the user at a terminal (no terminal: no)."""
    return sys.stdin.isatty() and input(f"\n{question} [y/N] ").strip().lower() == "y"


SETTINGS = "__"  # run's keyword for an executor's setting: EXECUTOR__FIELD
FLAG_OF: dict[str, str] = {}  # EXECUTOR__FIELD -> its flag, once executor_flags() ran


def without_settings(command: Callable) -> Callable:
    """`run` as typer first sees it: its **settings left out (executor_flags() fills them in)."""
    sig = inspect.signature(command)
    command.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD])
    return command


def executor_flags(command: Callable) -> None:
    """Give `command` (run) each installed executor's settings as flags, `--FIELD-NAME` with `EXECUTOR: help`, passed
    as EXECUTOR__FIELD keywords. This loads the executors, so it is done only for `run`."""
    from runner.executors import settings

    sig = inspect.signature(command)
    params = [p for p in sig.parameters.values() if SETTINGS not in p.name]
    for name, cls in settings().items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if flag in FLAG_OF.values() and FLAG_OF.get(f"{name}{SETTINGS}{f.name}") != flag:
                raise UsageError(f"executor {name}: its setting {flag} is another executor's too")
            FLAG_OF[f"{name}{SETTINGS}{f.name}"] = flag
            listed = f.default is dataclasses.MISSING  # a list: typer gives None when none is given
            params.append(inspect.Parameter(f"{name}{SETTINGS}{f.name}", inspect.Parameter.KEYWORD_ONLY,
                                            default=None if listed else f.default, annotation=Annotated[
                                                hints[f.name] | None if listed else hints[f.name],
                                                typer.Option(flag, help=f"{name}: {f.metadata['help']}",
                                                             show_default=False)]))
    command.__signature__ = sig.replace(parameters=params)


def executor_settings(executor: str, given: dict[str, Any]) -> dict[str, Any]:
    """The chosen executor's settings (field -> value) from run's EXECUTOR__FIELD keywords; a flag of another
    executor is a usage error."""
    mine, wrong = {}, []
    for key, value in given.items():
        name, _, field = key.partition(SETTINGS)
        if name == executor and value is not None:
            mine[field] = value
        elif name != executor and value not in (None, False, [], ()):
            wrong.append((name, FLAG_OF.get(key, key)))
    if wrong:
        raise UsageError(f"{', '.join(f for _, f in wrong)}: only with --executor {wrong[0][0]}")
    return mine
