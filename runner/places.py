"""Where itwin-run keeps things on this machine, outside any project (the engines fill them, the mount policy
protects them): nothing here imports the rest of itwin-run."""

from __future__ import annotations

import os
from pathlib import Path


def sif_cache() -> Path:
    """Apptainer's converted images: ITWIN_RUN_SIF_CACHE, else the user's cache directory."""
    base = os.environ.get("ITWIN_RUN_SIF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                         "itwin-run", "sif")
    return Path(base)
