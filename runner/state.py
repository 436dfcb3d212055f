"""What itwin-run remembers in a project's .itwin-run/: step records (fingerprints, for up-to-date skipping),
run manifests (provenance), and the lock that keeps two runs off one state directory."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from runner.errors import UserError


def tree_manifest(path: Path) -> str:
    """A digest of (relative path, size, mtime) of every file under path: cheap, and changes with any edit."""
    h = hashlib.sha256()
    if not path.exists():
        return ""
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            h.update(f"{os.path.relpath(p, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class State:
    def __init__(self, root: Path):
        self.dir = root / ".itwin-run"
        self.steps = self.dir / "steps"
        self.runs = self.dir / "runs"
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ lock

    def lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another itwin-run (pid {holder}) is running on {self.dir.parent}: "
                            "wait for it, or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------ step records

    def record(self, step: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.steps / f"{step}.json").read_text())
        except (OSError, ValueError):
            return None

    def complete(self, step: str, fp: str, output: Path | None, run_id: str) -> None:
        """Written last, after the step succeeded: the marker that its output is complete."""
        self.steps.mkdir(parents=True, exist_ok=True)
        rec = {"fingerprint": fp, "output": str(output) if output else None,
               "output_manifest": tree_manifest(output) if output else "", "run": run_id, "finished": time.time()}
        tmp = self.steps / f".{step}.json.tmp"
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(self.steps / f"{step}.json")

    def forget(self, step: str) -> None:
        (self.steps / f"{step}.json").unlink(missing_ok=True)

    def up_to_date(self, step: str, fp: str, output: Path | None) -> bool:
        rec = self.record(step)
        if not rec or rec.get("fingerprint") != fp:
            return False
        return not output or rec.get("output_manifest") == tree_manifest(output)

    # ------------------------------------------------------------ run manifests

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> Path:
        path = self.runs / run_id / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        tmp.replace(path)
        return path

    def manifests(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.runs.glob("*/manifest.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def manifest(self, run_id: str) -> dict[str, Any]:
        matches = [m for m in self.manifests() if m.get("run_id", "").startswith(run_id)]
        if len(matches) != 1:
            raise UserError(f"no run {run_id!r} in {self.runs}" if not matches else
                            f"{run_id!r} matches {len(matches)} runs: give more of the id")
        return matches[0]
