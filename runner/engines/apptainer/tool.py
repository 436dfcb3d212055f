"""What the Apptainer engine's parts share: the apptainer and mksquashfs executables, SIF names, and the
lock and error of a SIF cache."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from runner import ui
from runner.errors import UserError
from runner.places import sif_cache

REGISTRY_SCHEMES = ("docker://", "oras://", "library://", "shub://")

def mksquashfs() -> str | None:
    return os.environ.get("ITWIN_RUN_MKSQUASHFS") or shutil.which("mksquashfs")


def executable() -> str:
    """apptainer (or singularity) on PATH; spython calls `singularity`, so give it that name when missing."""
    exe = os.environ.get("ITWIN_RUN_APPTAINER") or shutil.which("apptainer") or shutil.which("singularity")
    if not exe:
        raise UserError("apptainer is not installed (or not on PATH): load it (`module load apptainer`) "
                        "or set ITWIN_RUN_APPTAINER to its path")
    if not shutil.which("singularity") or os.environ.get("ITWIN_RUN_APPTAINER"):
        shim = sif_cache().parent / "bin"
        link = shim / "singularity"
        try:
            shim.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink() or os.readlink(link) != exe:
                tmp = shim / f".singularity.{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(exe)
                tmp.replace(link)
        except OSError as exc:
            raise unwritable(sif_cache(), exc) from None
        os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    return exe


def suffix() -> str:
    comp = os.environ.get("ITWIN_RUN_SIF_COMPRESSION") or "lz4"
    return "" if comp == "lz4" else f".{safe_name(comp)}"


def safe_name(ref: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)


def unwritable(cache: Path, exc: OSError) -> UserError:
    return UserError(f"the SIF cache {cache} is not writable ({exc.strerror}): set ITWIN_RUN_SIF_CACHE to a directory "
                     "of yours")


@contextlib.contextmanager
def one_maker(target: Path) -> Iterator[bool]:
    """Many processes may need the same new SIF or overlay at once (runs started together, SLURM jobs, users of one
    shared cache): the first makes it while the others wait on a lock file beside it, then use what it made. Yields
    whether the target still has to be made. A maker that crashed leaves only its `.partial` file, never the
    target, and its lock goes with its process."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise unwritable(target.parent, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.say(f"waiting for another process that makes {target.name}", "dim")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield not target.is_file()
    finally:
        os.close(fd)


def plain_http(ref: str) -> bool:
    host = ref.removeprefix("docker://").split("/", 1)[0]
    return host.startswith(("127.", "localhost"))
