"""The MLOps config (train / inference / logger sections), as the prototype defined it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ItwinaiError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass
class MLOpsConfig:
    path: Path
    train_type: str
    train_path: Path | None
    inference: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    resume: bool = False  # train.resume: continue from the output's last.ckpt when there is one

    @property
    def experiment_name(self) -> str:
        return str(self.logger.get("experiment_name") or "itwinai")


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ItwinaiError(f"{p}: {what} not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ItwinaiError(f"{p}:{mark.line + 1 if mark else 1}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ItwinaiError(f"{p}:1: {what} must be a mapping")
    return data


def load_mlops(path: str | Path) -> MLOpsConfig:
    data = read_yaml(path, "MLOps config")
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ItwinaiError(f"{path}: train: must be a mapping with 'type' and 'path'")
    ttype = str(train.get("type", "lightning")).lower()
    tpath = train.get("path")
    for section in ("inference", "logger"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ItwinaiError(f"{path}: {section}: must be a mapping")
    resume = train.get("resume", False)
    if not isinstance(resume, bool):
        raise ItwinaiError(f"{path}: train.resume: must be true or false, not {resume!r}")
    return MLOpsConfig(path=Path(path), train_type=ttype, train_path=Path(tpath) if tpath else None,
                       inference=dict(data.get("inference") or {}), logger=dict(data.get("logger") or {}),
                       resume=resume)


def import_class(class_path: str, what: str) -> type:
    import importlib

    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ItwinaiError(f"cannot import {what} {class_path}: {exc}") from None


def require_lightning(kind: str, section: str, path: Path) -> None:
    if kind != "lightning":
        raise ItwinaiError(f"{path}: {section}.type: {kind!r} is not supported; only 'lightning' is "
                           "(TensorFlow support is not implemented)")


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b.c': 'value'} for MLflow params."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = str(d)[:6000]
    return out


SECTIONS = ("model", "data", "trainer", "optimizer", "lr_scheduler", "seed_everything")


def dotted_settings(extra: list[str]) -> dict[str, Any]:
    """`--model.init_args.hidden 16` / `--trainer.max_epochs=3` (LightningCLI's form) as {dotted key: value}, each
    value read as YAML (16 is a number, true a bool)."""
    out: dict[str, Any] = {}
    items = list(extra)
    while items:
        flag = items.pop(0)
        key, eq, value = flag.removeprefix("--").partition("=")
        if not flag.startswith("--") or key.split(".")[0] not in SECTIONS:
            raise ItwinaiError(f"unknown argument {flag!r} (settings of the Lightning config are "
                               f"--SECTION.KEY VALUE, SECTION one of {', '.join(SECTIONS)})")
        if not eq:
            if not items:
                raise ItwinaiError(f"{flag}: needs a value")
            value = items.pop(0)
        out[key] = yaml.safe_load(value) if value.strip() else value
    return out


def set_dotted(conf: dict[str, Any], key: str, value: Any, where: Any) -> None:
    """conf[a][b][c] = value for key a.b.c; every part but the last must be a mapping of the config."""
    *parents, last = key.split(".")
    node = conf
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ItwinaiError(f"--{key}: {part} in {where} is not a mapping")
    node[last] = value
