"""What itwin-run remembers in a project's .itwin-run/: step records (fingerprints, for up-to-date skipping), run
manifests (provenance), a cache of file digests, and the project lock that keeps two runs off one project."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from runner import tree
from runner.errors import UserError

IGNORE_FILE = ".itwinignore"
# What a step's fingerprint leaves out of the project tree by default (`.dockerignore` syntax; an .itwinignore at
# the project root adds patterns, and `!pattern` there takes one back): documents and logs, which no step reads.
DEFAULT_IGNORE = ["**/*.md", "**/*.rst", "**/*.log", "**/LICENSE*", "**/.gitignore", "**/.dockerignore", IGNORE_FILE,
                  "**/*.images.json"]


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


def _own_output_files() -> set[tuple[int, int]]:
    """(device, inode) of regular files our stdout/stderr go to: `itwin-run wf.yml > run.out` in the project."""
    out = set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.add((st.st_dev, st.st_ino))
    return out


_WORKFLOW_TEXT = re.compile(r"^steps:\s*$", re.M)


class ProjectFiles:
    """The project tree a step sees (it is mounted into every step), as `path -> digest`: content digests for
    files up to 16 MB (cached by size and mtime, so switching branches back and forth changes nothing), size and
    mtime beyond. Datasets, outputs any run recorded, state, VCS, virtual envs, documents and logs, itwin-run
    workflow files and the files in .itwinignore are left out."""

    def __init__(self, root: Path, state: State, exclude: list[Path]):
        self.root, self.state = root, state
        patterns = DEFAULT_IGNORE + tree.read_ignore(root / IGNORE_FILE)
        own = _own_output_files()
        cache = state.digest_cache()
        fresh: dict[str, list] = {}
        self.files: dict[str, str] = {}
        for rel, st in tree.walk(root, [*exclude, *state.recorded_outputs()], patterns):
            if (st.st_dev, st.st_ino) in own:
                continue
            key = [st.st_size, st.st_mtime_ns, st.st_ino]
            hit = cache.get(rel)
            if hit and hit[:3] == key:
                digest = hit[3]
            elif st.st_size > tree.SMALL:
                digest = f"size={st.st_size},mtime={st.st_mtime_ns}"
            else:
                try:
                    digest = tree.file_digest(root / rel)
                except OSError:
                    continue
            if rel.endswith((".yml", ".yaml")) and self._is_workflow(root / rel, digest, hit):
                digest = "workflow"
            fresh[rel] = [*key, digest]
            if digest != "workflow":
                self.files[rel] = digest
        if fresh != cache:
            state.save_digest_cache(fresh)

    @staticmethod
    def _is_workflow(path: Path, digest: str, hit: list | None) -> bool:
        """An itwin-run workflow file: its steps are fingerprinted field by field, not as a file."""
        if hit and hit[3] == "workflow" and digest == "workflow":
            return True
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:65536]
        except OSError:
            return False
        return bool(_WORKFLOW_TEXT.search(head)) and "command:" in head

    def digest(self, depends: list[str] | None = None, others: set[str] = frozenset()) -> str:
        """One digest of the files a step may read: those its `depends:` globs match, or else all of them but
        `others` (the files other steps' commands name: their scripts are theirs)."""
        if depends is not None:
            from docker.utils.build import PatternMatcher

            matcher = PatternMatcher(depends)
            files = {k: v for k, v in self.files.items() if matcher.matches(k)}
        else:
            files = {k: v for k, v in self.files.items() if k not in others}
        return fingerprint(files=files)


class State:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / ".itwin-run"
        self.steps = self.dir / "steps"
        self.runs = self.dir / "runs"
        self._fd: int | None = None

    # ------------------------------------------------------------ the project lock

    def lock(self) -> None:
        """One run at a time in a project: a second one is refused with the first one's pid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another itwin-run (pid {holder}) is running on {self.root}: "
                            "wait for it, or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def unlock(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------ step records (keyed by workflow file and step)

    def _record_path(self, key: str) -> Path:
        return self.steps / f"{key}.json"

    @staticmethod
    def record_key(root: Path, workflow: Path, step: str) -> str:
        try:
            rel = str(workflow.relative_to(root))
        except ValueError:
            rel = str(workflow)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.strip("/")) + "/" + step

    def record(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._record_path(key).read_text())
        except (OSError, ValueError):
            return None

    def complete(self, key: str, fp: str, output: Path | None, run_id: str) -> None:
        """Written last, after the step succeeded: the marker that its output is complete."""
        path = self._record_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"fingerprint": fp, "output": str(output) if output else None,
               "output_manifest": tree_manifest(output) if output else "", "run": run_id, "finished": time.time()}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(path)

    def forget(self, key: str) -> None:
        self._record_path(key).unlink(missing_ok=True)

    def up_to_date(self, key: str, fp: str, output: Path | None) -> bool:
        rec = self.record(key)
        if not rec or rec.get("fingerprint") != fp:
            return False
        return not output or rec.get("output_manifest") == tree_manifest(output)

    def recorded_outputs(self) -> list[Path]:
        """Every output dataset a step record names (any workflow of the project): run results, not sources."""
        out = []
        for path in self.steps.glob("*/*.json"):
            try:
                output = json.loads(path.read_text()).get("output")
            except (OSError, ValueError):
                continue
            if output:
                out.append(Path(output))
        return out

    # ------------------------------------------------------------ file digests

    def digest_cache(self) -> dict[str, list]:
        try:
            data = json.loads((self.dir / "digests.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_digest_cache(self, cache: dict[str, list]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".digests.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(cache, separators=(",", ":")))
        tmp.replace(self.dir / "digests.json")

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
