"""Safety: what a workflow file may mount, and what of a run is never shown (secrets).

The trust model: whoever writes a workflow file gets, through the engine, the rights of the person who runs it, and
no more. Datasets may live anywhere (HPC data is under /scratch, /p/project, /data) except where a container could
reach the host's engine, its system files or someone's credentials; `--allow-mount PATH` lifts that for PATH. The
engines say where they can be reached (their sockets and storage: `Engine.guarded`); the caller hands that in."""

from __future__ import annotations

import functools
import pwd
import re
from collections.abc import Callable, Iterable
from pathlib import Path

# System locations no dataset may be, be inside of, or contain.
SYSTEM = ["/proc", "/sys", "/dev", "/run", "/var/run", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32",
          "/lib64", "/libx32"]
Guarded = tuple[tuple[Path, str], ...]  # (path, why) the engines name: refused with whatever is inside
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|KEY|CREDENTIAL", re.I)
MASK = "********"


def _owner_home(path: Path) -> Path | None:
    try:
        return Path(pwd.getpwuid(path.stat().st_uid).pw_dir)
    except (OSError, KeyError):
        return None


@functools.cache
def _homes() -> tuple[Path, ...]:
    """Your home, root's, and the folders under /home: found without enumerating the user database (on an HPC
    login node with LDAP that can be slow or refused)."""
    homes = {Path.home(), Path("/root")}
    try:
        homes |= {d for d in Path("/home").iterdir() if d.is_dir()}
    except OSError:
        pass
    return tuple(sorted(homes))


@functools.cache
def refused(guarded: Guarded = ()) -> tuple[tuple[Path, str, bool], ...]:
    """(path, why, whether its inside is refused too): the system's places, then what the engines guard. A home
    directory itself is refused (and its dot-directories, in mount_problem), but data under a home directory is not."""
    out = [(Path(p), "a system location", True) for p in SYSTEM]
    out += [(Path(p), why, True) for p, why in guarded]
    out += [(home, "a home directory", False) for home in _homes()]
    return tuple((b, why, inside) for bad, why, inside in out for b in _variants(bad))


def _variants(p: Path) -> set[Path]:
    try:
        return {p, p.resolve()}
    except (OSError, RuntimeError):
        return {p}


def under(path: Path, top: Path) -> bool:
    """path is top or inside it (as strings: pathlib's `in .parents` is slow over hundreds of datasets)."""
    p, t = str(path), str(top).rstrip("/") or "/"
    return p == t or p.startswith(t + "/") or t == "/"


def mount_problem(path: Path, allowed: Iterable[str] = (), guarded: Guarded = ()) -> str | None:
    """Why a dataset at `path` (already resolved, symlinks followed) may not be mounted, or None."""
    for a in allowed:
        for allow in _variants(Path(a).expanduser()):
            if under(path, allow):
                return None
    for b, why, inside in refused(guarded):
        if path == b or (inside and under(path, b)):
            return f"{path} is {why}" + ("" if path == b else f" ({b})")
        if under(b, path):
            return f"{path} contains {b}, {why}"
    homes = {b for b, why, _ in refused(guarded) if why == "a home directory"}
    for above in [path, *path.parents]:  # anyone's home, by who owns it (no user database enumeration)
        if above not in homes and _owner_home(above) == above:
            if above == path:
                return f"{path} is a home directory"
            homes.add(above)
    for h in homes:
        if path != h and under(path, h) and path.relative_to(h).parts[0].startswith("."):
            return f"{path} is in a home directory's dot-directory (credentials, settings)"
    if ":" in str(path) or "," in str(path):
        return f"{path}: ':' and ',' in a dataset path cannot be passed to the engines' bind options"
    return None


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def mask_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (MASK if is_secret(k) else v) for k, v in env.items()}


def masker(env: dict[str, str]) -> Callable[[str], str]:
    """Hide the values of secret-named variables in a step's output lines (its log and the terminal)."""
    values = sorted((v for k, v in env.items() if is_secret(k) and len(v) >= 4), key=len, reverse=True)
    if not values:
        return lambda line: line

    def hide(line: str) -> str:
        for v in values:
            line = line.replace(v, MASK)
        return line
    return hide
