"""What the Apptainer engine's parts share: the apptainer and mksquashfs executables, SIF names, and the
lock and error of a SIF cache."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from runner.engines.base import one_at_a_time, scratch
from runner.errors import UserError
from runner.places import sif_cache

REGISTRY_SCHEMES = ("docker://", "oras://", "library://", "shub://")
MEMORY = Path("/dev/shm")


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
    """A new SIF or overlay, made by one process while the others that need it wait (one_at_a_time, on a lock file
    beside it). Yields whether the target still has to be made. A maker that crashed leaves only its `.partial` file,
    never the target."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(one_at_a_time(target.with_name(f".{target.name}.lock"), target.name))
        except OSError as exc:
            raise unwritable(target.parent, exc) from None
        yield not target.is_file()


def plain_http(ref: str) -> bool:
    host = ref.removeprefix("docker://").split("/", 1)[0]
    return host.startswith(("127.", "localhost"))


@contextlib.contextmanager
def unpacked_in_memory(size: int | None) -> Iterator[dict[str, str]]:
    """What `apptainer build` of an image of `size` bytes adds to its environment: where the user named no place to
    unpack images (APPTAINER_TMPDIR, TMPDIR), a folder of its own in memory (/dev/shm) when that holds the image
    twice over (unpacked, then squashed) with 1 GiB to spare. Unpacking the toy's 213 MB image onto this machine's
    disk took 15 s of a 17 s conversion, into memory 6.7 s (bench/sif.py); a node's /tmp is often no faster. What a
    runner killed outright left there goes at the next conversion (scratch)."""
    if size is None or os.environ.get("APPTAINER_TMPDIR") or os.environ.get("TMPDIR"):
        yield {}
        return
    try:
        room = shutil.disk_usage(MEMORY).free
        place = str(scratch(MEMORY, "itwin-sif")) if room > 2 * size + (1 << 30) else None
    except OSError:  # no /dev/shm, or not ours to write
        place = None
    try:
        yield {"APPTAINER_TMPDIR": place} if place else {}
    finally:
        if place:
            shutil.rmtree(place, ignore_errors=True)
