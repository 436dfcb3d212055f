"""What `itwin-run doctor` reports, one Check a line: the engines and executors say what they need of this machine
in these terms (runner.doctor puts them together)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    area: str  # docker, apptainer, slurm, images
    ok: bool | None  # None: worth knowing, not a requirement
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "info"}[self.ok]
        return f"{mark} {self.area}: {self.detail}" + (f" -> {self.fix}" if self.fix and not self.ok else "")


def free_space(area: str, path: Path, what: str, minimum_gb: float = 5.0) -> Check:
    """Free disk where `path` is (or would be), as a check."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 1e9
    return Check(area, free >= minimum_gb, f"{free:.1f} GB free for {what} ({path})",
                 f"free disk there (less than {minimum_gb:.0f} GB left), or move it")


def which(area: str, names: list[str], fix: str) -> tuple[list[Check], bool]:
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        return [Check(area, False, f"{', '.join(missing)} not on PATH", fix)], False
    return [Check(area, True, f"{', '.join(names)} on PATH")], True


def registries(*auth_files: Path) -> set[str]:
    """The registries that docker-style auth files (config.json, auth.json) hold credentials or helpers for."""
    found: set[str] = set()
    for f in auth_files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            for key in ("auths", "credHelpers"):
                found |= {h.removeprefix("https://").removeprefix("http://").split("/")[0]
                          for h in data.get(key) or {}}
    return found
