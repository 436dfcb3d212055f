"""The engine protocol: every container engine is a small class with these methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runner.images import BuildOptions, ImageSpec


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


class Engine(Protocol):
    name: str
    cwltool_args: list[str]  # how cwltool runs DockerRequirement tools with this engine
    cwl_output_at_dataset: bool  # whether cwltool can put a tool's output directory at the dataset's own path

    def resolve(self, spec: ImageSpec, opts: BuildOptions, *, build: bool = True) -> tuple[str, bool]:
        """The runnable reference for a spec and whether it is present; builds (or pulls) it when `build`."""
        ...

    def begin(self, labels: dict[str, str]) -> None:
        """A run starts: set up what its steps share (labelled with `labels`)."""
        ...

    def end(self) -> None:
        """The run is over (or interrupted): remove what begin() set up."""
        ...

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        """Run a job to completion, calling on_line for each output line; returns its exit code.
        The container (or process) is gone when this returns or raises."""
        ...

    def interrupt(self, force: bool) -> None:
        """Stop every step of this run that is running (kill at once when `force`); run() then returns."""
        ...

    def save(self, refs: list[str], dest: Path) -> list[Path]:
        """Write these images (as resolve() returned them) into dest, for a site with no registry."""
        ...

    def load(self, src: Path) -> list[str]:
        """Make images saved into src by save() available to this engine."""
        ...

    def cleanup(self, labels: dict[str, str]) -> int:
        """Remove whatever this engine left with these labels; returns how many."""
        ...
