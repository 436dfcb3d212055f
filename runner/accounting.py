"""What a step used, read from the kernel's cgroup accounting: the step's container runs under a cgroup parent of its
own, which keeps the totals (CPU time, peak memory) after the container and its cgroup are gone. cgroup v1 and v2."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def enabled() -> bool:
    """ITWIN_RUN_STATS=0 turns measuring off (wall time is kept)."""
    return os.environ.get("ITWIN_RUN_STATS", "1") != "0"


def version() -> int | None:
    """2 (unified), 1 (legacy: a memory and a cpuacct hierarchy), or None where neither can be read."""
    if (ROOT / "cgroup.controllers").is_file():
        return 2
    if (ROOT / "memory").is_dir() and any(ROOT.glob("cpu*/cpuacct.usage")):
        return 1
    return None


def hierarchies(v: int) -> list[Path]:
    """The cgroup trees a parent is made in: the unified one (v2), or every v1 hierarchy."""
    return [ROOT] if v == 2 else [d for d in ROOT.iterdir() if d.is_dir() and not d.is_symlink()]


def remove_abandoned(v: int, idle_s: float = 60) -> None:
    """The parents that no run will remove: those of a runner killed outright or of a daemon gone mid-step. A parent
    is removed once empty (rmdir refuses one that holds a container's cgroup) and unchanged for idle_s, that is
    its container ended that long ago: a runner reads and removes its own within moments of that end. Only where
    this user may (the daemon makes them as root)."""
    before = time.time() - idle_s
    for tree in hierarchies(v):
        try:
            parents = list((tree / "itwin-run").iterdir())
        except OSError:
            continue  # none yet in this hierarchy
        for d in parents:
            try:
                if d.is_dir() and d.stat().st_mtime < before:
                    d.rmdir()
            except OSError:
                pass  # in use, not ours to remove, or removed meanwhile


class Parent:
    """A cgroup parent (`/itwin-run/ID`) for one container, as the daemon's cgroupfs driver takes it."""

    def __init__(self, v: int):
        self.v = v
        self.path = f"/itwin-run/{secrets.token_hex(6)}"

    def _dirs(self) -> list[Path]:
        return [tree / self.path.lstrip("/") for tree in hierarchies(self.v)]

    def read(self) -> dict[str, float | int]:
        """cpu_s and peak_memory (bytes), where the kernel keeps them; call once the container is gone."""
        out: dict[str, float | int] = {}
        rel = self.path.lstrip("/")
        try:
            if self.v == 2:
                stat = dict(line.split() for line in (ROOT / rel / "cpu.stat").read_text().splitlines())
                out["cpu_s"] = int(stat["usage_usec"]) / 1e6
                peak = ROOT / rel / "memory.peak"  # Linux 5.19+
                if peak.is_file():
                    out["peak_memory"] = int(peak.read_text())
            else:
                cpu = next(ROOT.glob(f"cpu*/{rel}/cpuacct.usage"))
                out["cpu_s"] = int(cpu.read_text()) / 1e9
                out["peak_memory"] = int((ROOT / "memory" / rel / "memory.max_usage_in_bytes").read_text())
        except (OSError, StopIteration, KeyError, ValueError):
            pass  # not measured: absent from the record rather than made up
        return out

    def remove(self) -> None:
        for d in self._dirs():
            try:
                d.rmdir()
            except OSError:
                pass
