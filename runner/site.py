"""Site profiles (`--site NAME`, or ITWIN_RUN_SITE): what differs between the machines a project runs on, kept out of
its workflow files. The engine and executor to use; an executor's defaults, in a section named after it (SLURM's
account, partition, qos, GPU gres name, lines its jobs run first); itwin-run's environment there (the Apptainer
executable, the SIF cache, the temporary directory); folders every step gets read-only; the registry `build --push`
uses. What the command line gives wins over the profile, and the caller's environment over its `environment`.

A profile is sites/NAME.yml in the project, else in ~/.config/itwin-run/sites/ (XDG_CONFIG_HOME); or a path."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, TypeAdapter
from pydantic import ValidationError as PydanticError

from runner.errors import UsageError, ValidationError
from runner.policy import mount_problem
from runner.yamlfile import Lines, by_line, closest, compose, control_characters, dotted, short, where

WORDS = {r"^[A-Za-z0-9][A-Za-z0-9_.-]*$": "a name (letters, digits, _ . -)",
         r"^[A-Za-z_][A-Za-z0-9_]*$": "a variable's name (letters, digits, _; not a digit first)",
         r"^[A-Za-z0-9][A-Za-z0-9.:_-]*(/[a-z0-9][a-z0-9._/-]*)?$": "HOST[:PORT]/NAMESPACE"}
Name, Variable, Registry = (Annotated[str, StringConstraints(pattern=p, max_length=256)] for p in WORDS)


class SiteFile(BaseModel):
    """The profile's own fields (any other key is an executor's section: its settings, by their names)."""

    model_config = ConfigDict(extra="forbid")
    engine: Name | None = None
    executor: Name | None = None
    registry: Registry | None = None  # HOST[:PORT]/NAMESPACE
    binds: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = []
    environment: dict[Variable, Annotated[str, StringConstraints(max_length=4096)]] = {}


@dataclass
class Site:
    name: str | None = None  # None: no profile
    path: Path | None = None
    engine: str | None = None
    executor: str | None = None
    registry: str | None = None
    binds: list[str] = field(default_factory=list)  # as written: see folders()
    environment: dict[str, str] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: Lines = field(default_factory=dict)

    def settings(self, executor: str) -> dict[str, Any]:
        """The executor's section (checked by load()): field -> value."""
        return dict(self.sections.get(executor) or {})

    def folders(self, guarded: tuple[tuple[Path, str], ...] = ()) -> list[Path]:
        """The folders every step gets read-only at their own path (after apply(): they may name its variables):
        absolute, there, and nowhere the mount policy refuses."""
        out, problems = [], []
        for i, text in enumerate(self.binds):
            path = Path(os.path.expandvars(text)).expanduser()
            at = f"{self.path}:{where(self.lines, ('binds', i))}: binds[{i}]"
            if not path.is_absolute():
                problems.append(f"{at}: {text!r}: an absolute path (a bind is the same folder on every node)")
            elif not path.resolve().is_dir():
                problems.append(f"{at}: {path}: no such folder here")
            elif refused := mount_problem(path.resolve(), guarded=guarded):
                problems.append(f"{at}: refused: {refused}")
            else:
                out.append(path.resolve())
        if problems:
            raise ValidationError(problems)
        return out

    def apply(self) -> None:
        """Its environment, where the caller's does not say otherwise: engines and SLURM jobs then see it."""
        for key, value in self.environment.items():
            os.environ.setdefault(key, os.path.expandvars(value))

    def said(self) -> str:
        parts = [f"{k} {v}" for k, v in (("engine", self.engine), ("executor", self.executor),
                                          ("registry", self.registry)) if v]
        parts += [f"{name} defaults" for name in self.sections]
        parts += [f"{len(self.binds)} bind(s)"] if self.binds else []
        parts += [f"environment {', '.join(self.environment)}"] if self.environment else []
        return f"site {self.name} ({self.path}): " + ("; ".join(parts) or "empty")


def find(name: str, root: Path) -> Path:
    """The profile's file: a path as given, else sites/NAME.yml in the project, else in the user's settings."""
    if "/" in name or name.endswith((".yml", ".yaml")):
        if Path(name).expanduser().is_file():
            return Path(name).expanduser().resolve()
        raise UsageError(f"--site {name}: no such file")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "itwin-run" / "sites"
    places = [root / "sites", config]
    for place in places:
        if (place / f"{name}.yml").is_file():
            return place / f"{name}.yml"
    raise UsageError(f"--site {name}: no {name}.yml in {' or '.join(map(str, places))} (`itwin-run init` writes an "
                     "example: sites/example.yml)")


def _section(executor: str, given: dict[str, Any], fields: dict[str, Any], at: Callable[[str], str]) -> list[str]:
    """What is wrong in an executor's section, checked against its settings (field -> type)."""
    problems = []
    for key, value in given.items():
        if key not in fields:
            problems.append(f"{at(key)}: not a setting of the {executor} executor{closest(key, fields)}")
            continue
        try:
            given[key] = TypeAdapter(fields[key]).validate_python(value, strict=True)
        except PydanticError as exc:
            problems.append(f"{at(key)}: {short(exc.errors(include_url=False)[0])}")
    return problems


def load(name: str, root: Path, executors: dict[str, dict[str, Any]]) -> Site:
    """A site profile, checked: file:line errors for every problem, as a workflow file's."""
    path = find(name, root)
    fname = str(path)
    try:
        data, lines = compose(path.read_text(encoding="utf-8"), fname)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{fname}: cannot read the site profile: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationError([f"{fname}:1:1: top: a site profile is a mapping (engine, executor, binds, ...)"])
    problems = control_characters(data, lines, fname)
    known = set(executors)
    sections = {}
    for key, value in data.items():
        if key in SiteFile.model_fields:
            continue
        if key not in known:
            problems.append(f"{fname}:{where(lines, (key,))}: {key}: not a field of a site profile nor an installed "
                            f"executor{closest(key, [*SiteFile.model_fields, *known])}")
        elif not isinstance(value, dict | None):
            problems.append(f"{fname}:{where(lines, (key,))}: {key}: the {key} executor's settings, a mapping")
        else:
            sections[key] = value = value or {}
            problems += _section(key, value, executors[key],
                                 lambda field, key=key: f"{fname}:{where(lines, (key, field))}: {key}.{field}")
    try:
        site = SiteFile.model_validate({k: v for k, v in data.items() if k in SiteFile.model_fields})
    except PydanticError as exc:
        problems += [f"{fname}:{where(lines, e['loc'])}: {dotted(e['loc'])}: " + (
            f"{e['input']!r} is not {WORDS[e['ctx']['pattern']]}" if e["type"] == "string_pattern_mismatch" and
            e["ctx"]["pattern"] in WORDS else short(e)) for e in exc.errors(include_url=False)]
    if problems:
        raise ValidationError(sorted(problems, key=by_line))
    return Site(name, path, site.engine, site.executor, site.registry, list(site.binds), dict(site.environment),
                sections, lines)

