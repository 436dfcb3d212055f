"""Container engines behind one protocol (runner.engines.base.Engine)."""

from __future__ import annotations

from runner.engines.base import Engine, Job, Mount
from runner.errors import UserError

ENGINES = ("docker", "apptainer")


def get_engine(name: str, **kwargs: object) -> Engine:
    if name == "docker":
        from runner.engines.docker import DockerEngine

        return DockerEngine(**kwargs)  # type: ignore[arg-type]
    if name in ("apptainer", "singularity"):
        from runner.engines.apptainer import ApptainerEngine

        return ApptainerEngine(**kwargs)  # type: ignore[arg-type]
    raise UserError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


__all__ = ["Engine", "Job", "Mount", "get_engine", "ENGINES"]
