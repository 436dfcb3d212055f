"""Where itwin-run keeps things on this machine, outside any project (the engines fill them, the mount policy
protects them): nothing here imports the rest of itwin-run."""

from __future__ import annotations

import os
from pathlib import Path


def own_cache() -> Path:
    """itwin-run's folder in the user's cache directory (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "itwin-run")


def sif_cache() -> Path:
    """Apptainer's converted images: ITWIN_RUN_SIF_CACHE, else the user's cache directory."""
    return Path(os.environ.get("ITWIN_RUN_SIF_CACHE") or own_cache() / "sif")


def build_lock(daemon: str, content: str) -> Path:
    """The lock file of an image of this content being built on one daemon, whichever of this user's processes
    builds it."""
    import hashlib

    return own_cache() / "locks" / (hashlib.sha256(f"{daemon}\0{content}".encode()).hexdigest()[:24] + ".lock")
