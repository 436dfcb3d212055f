"""Plugins found through entry points (engines, executors): the built-in ones are declared in pyproject.toml the
same way as another package's."""

from __future__ import annotations

import functools
import importlib
import sys
from importlib.metadata import entry_points
from typing import Any


def declared(group: str, built_in: dict[str, str]) -> dict[str, str]:
    """Name -> `module:attribute` of each plugin of the group; `built_in` where no installed metadata declares any
    (a source tree run without installing it)."""
    return dict(_scan(group, tuple(sys.path))) or dict(built_in)


@functools.lru_cache(maxsize=8)
def _scan(group: str, path: tuple[str, ...]) -> dict[str, str]:  # once per process (and per sys.path)
    return {ep.name: ep.value for ep in entry_points(group=group)}


def load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
