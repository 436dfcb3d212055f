"""Container engines: each module here gives an ImageBuilder and a StepRunner (runner.engines.base)."""

from __future__ import annotations

import importlib

from runner.engines.base import Cancelled, ImageBuilder, Job, Mount, StepRunner
from runner.errors import UsageError

# engine name -> (module, builder class, runner class)
ENGINES = {"docker": ("runner.engines.docker", "DockerBuilder", "DockerRunner"),
           "apptainer": ("runner.engines.apptainer", "ApptainerBuilder", "ApptainerRunner")}
ALIASES = {"singularity": "apptainer"}


def _entry(name: str) -> tuple:
    name = ALIASES.get(name, name)
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    module, builder, runner = ENGINES[name]
    mod = importlib.import_module(module)
    return getattr(mod, builder), getattr(mod, runner)


def get_builder(name: str, **kwargs: object) -> ImageBuilder:
    return _entry(name)[0](**kwargs)


def get_runner(name: str) -> StepRunner:
    return _entry(name)[1]()


__all__ = ["Cancelled", "ImageBuilder", "Job", "Mount", "StepRunner", "get_builder", "get_runner", "ENGINES"]
