"""What a step used, read from the kernel's cgroup accounting: the step's container runs under a cgroup parent of its
own, which keeps the totals (CPU time, peak memory) after the container and its cgroup are gone. cgroup v1 and v2."""

from __future__ import annotations

import os
import secrets
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


class Parent:
    """A cgroup parent (`/itwin-run/ID`) for one container, as the daemon's cgroupfs driver takes it."""

    def __init__(self, v: int):
        self.v = v
        self.path = f"/itwin-run/{secrets.token_hex(6)}"

    def _dirs(self) -> list[Path]:
        if self.v == 2:
            return [ROOT / self.path.lstrip("/")]
        return [d / self.path.lstrip("/") for d in ROOT.iterdir() if d.is_dir() and not d.is_symlink()]

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
