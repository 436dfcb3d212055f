"""What itwin-run remembers in a project's .itwin-run/: step records (fingerprints, for up-to-date skipping), run
manifests (provenance), a cache of file digests, and the project lock that keeps two runs off one project."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

from runner import tree
from runner.errors import UsageError, UserError

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

    def read_by(self, depends: list[str] | None = None, others: set[str] = frozenset()) -> dict[str, str]:
        """The files a step may read, with their digests: those its `depends:` globs match, or else all of them but
        `others` (the files other steps' commands name: their scripts are theirs)."""
        if depends is not None:
            from docker.utils.build import PatternMatcher

            matcher = PatternMatcher(depends)
            return {k: v for k, v in self.files.items() if matcher.matches(k)}
        return {k: v for k, v in self.files.items() if k not in others}

    def digest(self, depends: list[str] | None = None, others: set[str] = frozenset()) -> str:
        """One digest of the files a step may read (read_by)."""
        return fingerprint(files=self.read_by(depends, others))


def _started(pid: int) -> str | None:
    """When a process started (clock ticks since boot, /proc/PID/stat): a pid and this name one process, never a
    later one that got the same pid; None when no such process runs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict[str, Any]:
    """What a run's manifest keeps of the process that runs it, so that any later command can tell it died."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_started": _started(os.getpid())}


def runner_gone(manifest: dict[str, Any]) -> bool:
    """The run says it is running, on this host, and the process that ran it is gone (killed outright: SIGKILL,
    the OOM killer). A run of another host, or one that records no process, is never judged here."""
    pid = manifest.get("pid")
    if manifest.get("status") != "running" or not isinstance(pid, int) or manifest.get("host") != socket.gethostname():
        return False
    return _started(pid) != manifest.get("pid_started")


def crashed(manifest: dict[str, Any]) -> dict[str, Any]:
    """The record of a run whose process died: `crashed`, its running steps `interrupted` (never complete)."""
    for entry in manifest.get("steps", {}).values():
        if entry.get("status") in (None, "running"):
            entry["status"] = "interrupted"
    manifest["status"] = "crashed"
    manifest["error"] = (f"the itwin-run process (pid {manifest['pid']}) ended without finishing the run "
                         "(killed outright?): what it was writing is not trusted")
    return manifest


def step_fingerprint(parts: dict, inputs: dict[str, str]) -> str:
    """What a step's record is checked against: its image, argv, env, user, the project files it may read, and
    its inputs as they are now. (`files`, the digest of each of those files, is for saying why; `project` holds it.)"""
    return fingerprint(**{k: v for k, v in parts.items() if k != "files"},
                       inputs={d: tree_manifest(Path(p)) for d, p in inputs.items()})


def facts(parts: dict, inputs: dict[str, str]) -> dict[str, Any]:
    """What a record keeps of a step's fingerprint, to say later why the step runs again."""
    return {"image": parts.get("image"), "engine": parts.get("engine"), "argv": parts.get("argv"),
            "env": fingerprint(env=parts.get("env"))[:16], "user": parts.get("user"), "gpus": parts.get("gpus"),
            "files": parts.get("files") or {}, "inputs": {d: tree_manifest(Path(p)) for d, p in inputs.items()}}


def why(rec: dict[str, Any] | None, parts: dict, inputs: dict[str, str]) -> str:
    """Why a step whose record does not match runs again, in a few words."""
    if not rec:
        return "first run"
    was, now = rec.get("facts"), facts(parts, inputs)
    if not was:
        return "changed since its last run"
    if was["image"] != now["image"] or was["engine"] != now["engine"]:
        return "image changed"
    if was["argv"] != now["argv"]:
        return "command or params changed"
    if was["env"] != now["env"] or was["user"] != now["user"] or was["gpus"] != now["gpus"]:
        return "env, user or gpus changed"
    edited = sorted(set(was["files"].items()) ^ set(now["files"].items()))
    if edited:
        names = list(dict.fromkeys(name for name, _ in edited))
        return "changed: " + ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    inputs_changed = [d for d in now["inputs"] if was["inputs"].get(d) != now["inputs"][d]]
    if inputs_changed:
        return "input changed: " + ", ".join(inputs_changed)
    return "its output changed since it was made"


def complete_step(root: Path, key: str, parts: dict, inputs: dict[str, str], output: str | None, run_id: str) -> None:
    """Mark a step's output complete (after it succeeded): used by the session and by SLURM's step jobs."""
    State(root).complete(key, step_fingerprint(parts, inputs), Path(output) if output else None, run_id,
                         facts(parts, inputs))


class State:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / ".itwin-run"
        self.steps = self.dir / "steps"
        self.runs = self.dir / "runs"
        self._fd: int | None = None

    # ------------------------------------------------------------ the project lock

    def lock(self, run_id: str = "") -> None:
        """One run at a time in a project: a second one is refused with the first one's pid. The lock file names
        the holder's pid and run until it unlocks: a name still there when the lock is free is a run whose process
        died, recorded `crashed` now."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (os.read(fd, 200).decode(errors="replace").split() or ["?"])[0]
            os.close(fd)
            raise UserError(f"another itwin-run (pid {holder}) is running on {self.root}: "
                            "wait for it, or stop it first") from None
        left = os.read(fd, 200).decode(errors="replace").split()
        if len(left) == 2:
            self.over(left[1])
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {run_id}".encode())
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

    def complete(self, key: str, fp: str, output: Path | None, run_id: str, known: dict | None = None) -> None:
        """Written last, after the step succeeded: the marker that its output is complete."""
        path = self._record_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"fingerprint": fp, "output": str(output) if output else None,
               "output_manifest": tree_manifest(output) if output else "", "run": run_id, "finished": time.time(),
               **({"facts": known} if known else {})}
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
        """Every run's manifest; a run whose process died is recorded `crashed` here, by whichever command reads
        them first."""
        out = []
        for path in sorted(self.runs.glob("*/manifest.json")):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.append(self.settle(m))
        return out

    def settle(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The manifest as it is: a run whose process died is written `crashed` first."""
        if runner_gone(manifest):
            try:
                self.write_manifest(manifest["run_id"], crashed(manifest))
            except OSError:
                pass  # a reader who may not write here still sees it crashed
        return manifest

    # ------------------------------------------------------------ detached runs (their jobs run on without us)

    def note_detached(self, run_id: str) -> None:
        with open(self.dir / "detached", "a") as f:
            f.write(run_id + "\n")

    def detached(self) -> list[str]:
        """Runs whose jobs went on without their runner (--detach, or a Ctrl-C that left them), not yet settled."""
        try:
            return list(dict.fromkeys((self.dir / "detached").read_text().split()))
        except OSError:
            return []

    def settle_detached(self, run_id: str, steps: dict[str, str]) -> None:
        """A detached run's jobs all ended: its record says how (`steps`: step -> done, failed or interrupted)."""
        path = self.runs / run_id / "manifest.json"
        m = json.loads(path.read_text())
        for name, status in steps.items():
            entry = m.setdefault("steps", {}).setdefault(name, {})
            if entry.get("status") in (None, "running", "submitted"):
                entry["status"] = status
        final = [e.get("status") for e in m["steps"].values()]
        m["status"] = ("failed" if "failed" in final else "interrupted" if any(s != "done" for s in final)
                       else "succeeded")
        m["ended"] = m.get("ended") or time.time()
        self.write_manifest(run_id, m)
        self.drop_detached(run_id)

    def drop_detached(self, run_id: str) -> None:
        left = [r for r in self.detached() if r != run_id]
        (self.dir / "detached").write_text("".join(r + "\n" for r in left))

    def over(self, run_id: str) -> bool:
        """Whether a run of this project is over: it ended, or its process died (a run of another project, or an
        unknown one, is not this project's to judge)."""
        try:
            m = json.loads((self.runs / run_id / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return self.settle(m).get("status") not in ("running", "submitted")

    def manifest(self, run_id: str | None = None) -> dict[str, Any]:
        """A run's manifest by its id or the id's start; the latest run's when `run_id` is None. A wrong id is a
        usage error that names the recent runs."""
        runs = sorted(self.manifests(), key=lambda m: m.get("started", 0))
        if not runs:
            raise UsageError(f"no runs yet in {self.root}")
        if run_id is None:
            return runs[-1]
        matches = [m for m in runs if m.get("run_id", "").startswith(run_id)]
        if len(matches) != 1:
            recent = ", ".join(m.get("run_id", "?") for m in runs[-5:][::-1])
            raise UsageError(f"no run {run_id!r} in {self.root} (recent: {recent})" if not matches else
                             f"{run_id!r} matches {len(matches)} runs: give more of the id (recent: {recent})")
        return matches[0]
