"""A run's watchdog: a small process in a session of its own that holds a pipe from the runner. A runner that ends
as it should says so, and the watchdog exits with nothing to do. When the pipe closes without that (the runner got
SIGKILL: the OOM killer, a CI time limit, a killed tmux), the watchdog removes what the run left: the containers
that carry all of the run's labels, the process groups of its steps, the SLURM jobs it was asked to cancel
(--cancel-on-exit), and what an engine's own commands remove (Podman's `podman rm --filter label=RUN`). It
touches nothing else: another run's containers carry another run label, and a group or a job is only one this
runner named and did not release.

The runner side is `Watchdog`; the process runs this file as a script (the package's imports would cost it a
quarter of a second), with nothing beyond the standard library until there is something to remove."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading


class Watchdog:
    """Started on first use, so that a run that starts nothing starts no watchdog either."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None:
                self._proc = subprocess.Popen([sys.executable, "-I", __file__], stdin=subprocess.PIPE,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                              start_new_session=True)  # no terminal signal reaches it
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass  # it is gone: nothing more it could do

    def containers(self, labels: dict[str, str], host: str | None = None) -> None:
        """Should the runner die, remove the containers that carry all of these labels (asking the daemon at
        `host`, a Docker-compatible API; DOCKER_HOST's by default)."""
        self._send(f"containers {host or '-'} " + " ".join(f"{k}={v}" for k, v in sorted(labels.items())))

    def command(self, argv: list[str]) -> None:
        """Should the runner die, run this command (an engine's own way to remove what the run started)."""
        self._send("command " + json.dumps(argv))

    def group(self, pgid: int) -> None:
        """Should the runner die, kill this process group (a step's)."""
        self._send(f"group {pgid}")

    def release(self, pgid: int) -> None:
        """The group ended: never signal that number again (another process may get it)."""
        self._send(f"release {pgid}")

    def job(self, job_id: str) -> None:
        """Should the runner die, scancel this SLURM job."""
        self._send(f"job {job_id}")

    def close(self) -> None:
        """The run ended as it should: the watchdog exits and removes nothing."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write("end\n")
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remove_containers(filters: list[list[str]]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # the docker library, not ./docker/
    import docker

    for host, *labels in filters:
        try:
            api = (docker.from_env(timeout=30) if host == "-" else docker.DockerClient(base_url=host, timeout=30)).api
            found = api.containers(all=True, filters={"label": labels})
        except Exception:  # docker-py's or the connection's: no daemon answers there, nothing to ask
            continue
        for c in found:
            try:
                api.remove_container(c["Id"], force=True)
            except docker.errors.APIError:
                pass  # removed already


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end tells it what happened
    filters: list[list[str]] = []
    groups: set[int] = set()
    jobs: list[str] = []
    commands: list[list[str]] = []
    for line in sys.stdin:
        what, _, rest = line.strip().partition(" ")
        if what == "end":
            os._exit(0)  # nothing to remove, nothing to flush: the runner waits for this exit
        if what == "containers":
            filters.append(rest.split())
        elif what == "group":
            groups.add(int(rest))
        elif what == "release":
            groups.discard(int(rest))
        elif what == "job":
            jobs.append(rest)
        elif what == "command":
            commands.append(json.loads(rest))
    for pgid in groups:  # the runner died: its steps go
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    if jobs:
        subprocess.run(["scancel", *jobs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if filters:
        _remove_containers(filters)
    for argv in commands:
        try:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            pass


if __name__ == "__main__":
    main()
