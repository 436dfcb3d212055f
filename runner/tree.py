"""Walking a project tree: what an image's source hash and a step's fingerprint see of it.

One walker for both. It skips caches, VCS and virtual-env folders, paths given as excluded (datasets, the state
folder), and what an ignore file excludes (`.dockerignore` syntax, matched with docker-py's own matcher)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

# Never part of what a step or an image is made of.
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "node_modules",
                       ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints",
                       ".itwin-run", "build", "dist"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
SMALL = 16 << 20  # files up to this size are fingerprinted by content, larger ones by size and mtime


def read_ignore(path: Path) -> list[str]:
    """Patterns of an ignore file (`.dockerignore` syntax); none when it does not exist."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def walk(root: Path, exclude: Iterable[Path] = (), patterns: Iterable[str] = ()) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to root, stat) of every regular file under root, in a stable order."""
    excluded = {str(p) for p in exclude}
    pats = list(patterns)
    matcher = None
    if pats:
        from docker.utils.build import PatternMatcher  # docker-py's .dockerignore matcher (imported when needed)

        matcher = PatternMatcher(pats)
    root_s = str(root)
    for dirpath, dirnames, filenames in os.walk(root_s):
        rel_dir = os.path.relpath(dirpath, root_s)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = os.path.join(rel_dir, d)
            if d in SKIP_DIRS or d.endswith(".egg-info") or full in excluded:
                continue
            if os.path.isfile(os.path.join(full, "pyvenv.cfg")):  # a virtual env under any name
                continue
            if matcher and matcher.matches(rel):
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.endswith(SKIP_SUFFIXES):
                continue
            full = os.path.join(dirpath, f)
            rel = os.path.join(rel_dir, f)
            if full in excluded or (matcher and matcher.matches(rel)):
                continue
            try:
                st = os.stat(full)
            except OSError:
                continue
            if os.path.isfile(full):
                yield rel, st


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(root: Path, exclude: Iterable[Path] = (), patterns: Iterable[str] = ()) -> list[str]:
    """`relative path:sha256` of every file: what an image built from this tree is made of."""
    return [f"{rel}:{file_digest(root / rel)}" for rel, _ in walk(root, exclude, patterns)]


def empty_output(output: str | None, allowed: bool) -> bool:
    """Whether a step that exited 0 wrote nothing into its output (no file under it, the walk stops at the first),
    and does not say `allow_empty_output`: then it is not done. The session and SLURM's step jobs ask this."""
    if not output or allowed:
        return False
    return not any(filenames for _dirpath, _dirnames, filenames in os.walk(output))
