"""What the Apptainer engine made on this machine (`images`, `prune`) and what it needs of it (`doctor`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from runner.checks import registries
from runner.engines.apptainer.tool import (
    executable,
)
from runner.engines.base import Made
from runner.errors import UserError
from runner.places import sif_cache


def doctor(needs_gpu: bool) -> list:
    """The Apptainer side of `itwin-run doctor`."""
    from runner.checks import Check, free_space

    area = "apptainer"
    if not (os.environ.get("ITWIN_RUN_APPTAINER") or shutil.which("apptainer") or shutil.which("singularity")):
        return [Check(area, False, "apptainer (or singularity) not on PATH",
                      "load it (`module load apptainer`) or set ITWIN_RUN_APPTAINER to its path")]
    try:
        exe = executable()
    except UserError as exc:  # where it keeps the SIFs cannot be written
        detail, _, fix = str(exc).partition(": set ")
        return [Check(area, False, detail, "set " + fix)]
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    if proc.returncode != 0:
        return [Check(area, False, f"{exe} --version fails: {(proc.stderr or proc.stdout).strip()[:200]}",
                      "repair the installation")]
    checks = [Check(area, True, f"{proc.stdout.strip()} ({exe})")]
    if os.getuid() == 0:
        checks.append(Check(area, True, "you are root: exec works (steps run with --no-privs)"))
    else:
        try:
            userns = int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
        except (OSError, ValueError):
            userns = False
        starter = Path(exe).resolve().parent.parent / "libexec" / "apptainer" / "bin" / "starter-suid"
        setuid = starter.exists() and bool(starter.stat().st_mode & 0o4000)
        checks.append(Check(area, userns or setuid, "non-root exec through " + (
            "user namespaces" if userns else "the setuid starter" if setuid else "nothing"),
            "ask the site to enable user namespaces (or the setuid starter)"))
    nv = shutil.which("nvidia-smi") is not None
    checks.append(Check(area, nv if needs_gpu else None, "--nv: nvidia-smi found" if nv else "--nv: no NVIDIA driver here",
                        "run on a GPU node with the NVIDIA driver"))
    cache = sif_cache()
    near = next(p for p in (cache, *cache.parents) if p.exists())
    writable = os.access(near, os.W_OK | os.X_OK)
    checks.append(Check(area, writable, f"the SIF cache {cache} is " + ("writable" if writable else
                                                                          f"not writable ({near})"),
                        "set ITWIN_RUN_SIF_CACHE to a directory of yours"))
    checks.append(free_space(area, cache, "the SIF cache"))
    tmp = Path(os.environ.get("APPTAINER_TMPDIR") or tempfile.gettempdir())
    room = free_space(area, tmp, "converting images (APPTAINER_TMPDIR)")
    room.fix = "set APPTAINER_TMPDIR to a local disk with room for the largest image, unpacked"
    checks.append(room)
    return checks


def made() -> list[Made]:
    """The SIFs in itwin-run's cache (converted from step images)."""
    cache = sif_cache()
    busy = _open_sifs()
    return [Made("apptainer", str(p), p.stat().st_size, p.stat().st_mtime, key=str(p), busy=str(p) in busy)
            for p in sorted([*cache.glob("*.sif"), *cache.glob("*.sqfs")])] if cache.is_dir() else []


def _open_sifs() -> set[str]:
    """SIFs a running step has open: an apptainer process's file, or a loop device's backing file."""
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.add(backing.read_text().strip())
        except OSError:
            continue
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith((".sif", ".sqfs")):
            found.add(target)
    return found


def remove(item: Made) -> None:
    try:
        Path(item.key).unlink()
    except OSError as exc:
        raise UserError(f"cannot remove {item.ref}: {exc.strerror}") from None


def guarded() -> list[tuple[Path, str]]:
    return [(sif_cache(), "itwin-run's SIF cache")]  # shared by every run and user of it: never a step's to write


def credentials() -> set[str]:
    """What `apptainer registry login` keeps for docker:// registries."""
    return registries(Path.home() / ".apptainer" / "docker-config.json")
