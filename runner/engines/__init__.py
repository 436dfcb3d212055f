"""Container engines: each is one module that declares an `Engine` (runner.engines.base), found through the
`itwin_run.engines` entry points; the built-in ones are registered the same way, in pyproject.toml."""

from __future__ import annotations

import pkgutil
from pathlib import Path

from runner import plugins
from runner.engines.base import Cancelled, Engine, ImageBuilder, Job, Mount, StepRunner
from runner.errors import UsageError

GROUP = "itwin_run.engines"
# Where no installed metadata declares any (a source tree run without installing it): the modules here.
BUILT_IN = {m.name: f"runner.engines.{m.name}:ENGINE" for m in pkgutil.iter_modules(__path__)
            if m.name not in ("base", "watchdog")}


def available() -> dict[str, str]:
    """Engine name -> where its declaration is (`module:attribute`), as the entry points say."""
    return plugins.declared(GROUP, BUILT_IN)


def _load(target: str) -> Engine:
    return plugins.load(target)


def engine(name: str) -> Engine:
    """The engine of that name (or alias: `singularity` is apptainer)."""
    found = available()
    if name in found:
        return _load(found[name])
    also = next((e for e in engines() if name in e.aliases), None)
    if also is None:
        raise UsageError(f"unknown engine {name!r}: choose one of {', '.join(found)}")
    return also


def engines() -> list[Engine]:
    """Every engine installed (loading each module)."""
    return [_load(target) for target in available().values()]


def guarded() -> tuple[tuple[Path, str], ...]:
    """What every installed engine guards (its sockets, storage, image files), for the mount policy: a step under one
    engine must not reach another one either."""
    return tuple(g for e in engines() for g in e.guarded())


def get_builder(name: str, **kwargs: object) -> ImageBuilder:
    return engine(name).builder(**kwargs)


def oci_builder(name: str, needs: str, **kwargs: object) -> ImageBuilder:
    """The builder of engine `name` where its images are OCI images (what registries and CWL's DockerRequirement
    name); a usage error naming those that are, where its images are files (SIFs)."""
    oci = [e.name for e in engines() if e.image_kind == "DockerImage"]
    if engine(name).name not in oci:
        raise UsageError(f"--engine {name}: {needs} names OCI images, which {', '.join(oci)} build")
    return get_builder(name, **kwargs)


def get_runner(name: str) -> StepRunner:
    return engine(name).runner()


__all__ = ["Cancelled", "Engine", "ImageBuilder", "Job", "Mount", "StepRunner", "available", "engine", "engines",
           "get_builder", "get_runner", "guarded", "oci_builder"]
