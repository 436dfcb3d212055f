"""The command line's shared flags (typer's Annotated types), what parses them, and its usage errors in
itwin-run's voice."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from runner import ui
from runner.errors import UsageError

WorkflowArg = Annotated[Path, typer.Argument(help="Workflow YAML (the prototype's format).", show_default=False)]
EngineOpt = Annotated[str, typer.Option("--engine", "-e", help="Container engine: docker (the default) or another "
                                                                "installed one; `itwin-run doctor` checks each.")]
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


AllowOpt = Annotated[list[str] | None, typer.Option(
    "--allow-mount", help="Allow a dataset at or under PATH that the mount policy refuses (repeatable; recorded).")]


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
            ui.say(f" {message.rstrip('.')}; {hint}", "red", prefix="error:")
        sys.exit(exc.exit_code)
    raise exc
