"""Podman's step runner: each step through `podman run`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner import ui
from runner.engines.base import Cancelled, GpuShare, Job, host_gpus, time_limit
from runner.engines.docker.client import SHM_SIZE, UNPRIVILEGED, security_options
from runner.engines.podman.system import cgroup_limits, executable, rootless
from runner.engines.watchdog import Watchdog
from runner.errors import UserError
from runner.images import LABEL


class PodmanRunner:
    """Runs each step with `podman run` (the CLI: a step starts in about 0.2 s, where the service's create, start,
    wait and remove took about 0.55 s, and the service itself 0.6 s to start: bench/podman.py). No container is
    made ahead as Docker's are: `podman start --attach` of a container `podman create` made takes 0.18-0.20 s
    itself, as much as the whole `podman run` (0.19-0.21 s, rootless, here); the CLI's own start is most of
    either. The container gets Docker's options: the mount policy's binds at their host paths, no capabilities, no
    new privileges, an init, and the pids, cpus and memory limits where Podman can apply them; it is removed when
    it ends."""

    name = "podman"
    cwltool_args = ["--podman"]
    cwl_output_at_dataset = True  # DockerRequirement.dockerOutputDirectory

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}
        self._lock = threading.Lock()  # guards _active and _cancelled: no container starts after interrupt()
        self._active: dict[str, subprocess.Popen] = {}  # container name -> its `podman run`
        self._cancelled = self._forced = False
        self._after: list[threading.Thread] = []  # removals and the sweep of earlier runs' leftovers
        self._watchdog = Watchdog()
        self._watched = False
        self._gpus = GpuShare()  # the node's GPUs among concurrent steps, where no allocation names them

    def default_user(self, root: Path) -> str:
        """Rootless: the container's root, which is you outside. As root: Docker's choice (the project's owner)."""
        if rootless():
            return "0:0"
        st = root.stat()
        return f"{st.st_uid}:{st.st_gid}" if st.st_uid != 0 else UNPRIVILEGED

    def begin(self, labels: dict[str, str]) -> None:
        self._labels = labels

    def _background(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        with self._lock:
            self._after.append(thread)

    def clean(self, over: Callable[[str], bool]) -> None:
        self._background(self._sweep, over)  # other runs' containers: nothing this run waits for

    @staticmethod
    def _sweep(over: Callable[[str], bool]) -> None:
        listed = subprocess.run([executable(), "ps", "-a", "--filter", f"label={LABEL}.managed=1", "--format", "json"],
                                capture_output=True, text=True)
        for c in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
            run = (c.get("Labels") or {}).get(f"{LABEL}.run")
            if run and over(run):
                subprocess.run([executable(), "rm", "-f", "-t", "0", c["Id"]], capture_output=True)

    def _argv(self, job: Job, name: str, keep: bool, gpus: list[str] | None) -> list[str]:
        argv = [executable(), "run", "--pull", "never", "--init", "--log-driver", "none", "--name", name,
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--shm-size", SHM_SIZE,
                "--user", job.user, "--workdir", str(job.workdir), *([] if keep else ["--rm"])]
        if cgroup_limits():
            argv += ["--pids-limit", str(security_options()["pids_limit"])]
            if job.limits.cpus:
                argv += ["--cpus", str(job.limits.cpus)]
            if job.limits.memory:
                argv += ["--memory", str(job.limits.memory_bytes), "--memory-swap", str(job.limits.memory_bytes)]
        elif job.limits.cpus or job.limits.memory:
            ui.say(f"step {job.step}: rootless Podman on cgroup v1 cannot limit cpus, memory or processes (time "
                   "limits apply); ask for cgroup v2 with delegation", "yellow", prefix="note:")
        if job.gpus:  # the NVIDIA CDI spec's devices: those of the caller's allocation the step asks for, else
            ids = host_gpus(job.gpus, os.environ) if gpus is None else gpus  # those chosen (the container sees
            argv += [f"--device=nvidia.com/gpu={i}" for i in (["all"] if ids is None else ids)]  # only them)
        for key, value in {f"{LABEL}.managed": "1", **self._labels, **job.labels}.items():
            argv += ["--label", f"{key}={value}"]
        for key, value in job.env.items():
            argv += ["--env", f"{key}={value}"]
        for m in job.mounts:
            argv += ["--volume", f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"]
        return [*argv, job.image, *job.argv]

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        run_id = self._labels.get(f"{LABEL}.run", "")
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"itwin-{run_id[-6:]}-{job.step}-{uuid.uuid4().hex[:6]}")
        # `--rm` (a removal in the background would hold Podman's storage lock as the next step starts), but for a
        # step with a memory limit, kept until asked whether the kernel killed it
        keep = bool(job.limits.memory) and cgroup_limits()
        with self._lock:
            if self._cancelled:
                raise Cancelled(job.step)
            if run_id and not self._watched:  # should this process die, the run's containers go
                self._watched = True
                self._watchdog.command([executable(), "rm", "-f", "-t", "0", "--filter", f"label={LABEL}.run={run_id}"])
            alone = isinstance(job.gpus, int) and job.gpus and host_gpus(job.gpus, os.environ) is None
            taken = self._gpus.take(job.gpus) if alone else None  # type: ignore[arg-type]
            proc = subprocess.Popen(self._argv(job, name, keep, taken), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # signals come from interrupt()
            self._active[name] = proc
        started = time.monotonic()
        timer = time_limit(job, lambda: self._stop(name, proc, force=True))
        last = ""
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                last = raw.decode("utf-8", "replace").rstrip("\n")
                on_line(last)
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if taken:
                self._gpus.give(taken)
            with self._lock:
                self._active.pop(name, None)
        job.usage["wall_s"] = round(time.monotonic() - started, 3)
        if keep:
            if code and "killed" not in job.usage and self._inspect(name, "{{.State.OOMKilled}}") == "true":
                job.usage["killed"] = f"out of memory (limit {job.limits.memory})"
            remove = [executable(), "rm", "-f", "-t", "0", name]
            self._background(lambda: subprocess.run(remove, capture_output=True))  # off the next step's path
        if code == 125 and last.startswith("Error: "):  # Podman's own refusal, not the step's
            raise UserError(f"step {job.step!r}: podman could not run the container: {last[7:]}")
        return code

    @staticmethod
    def _inspect(name: str, template: str) -> str:
        return subprocess.run([executable(), "inspect", "--format", template, name], capture_output=True,
                              text=True).stdout.strip()

    def _stop(self, name: str, proc: subprocess.Popen, force: bool) -> None:
        """Stop a step's container; until `podman run` has created it, ask again."""
        verb = ["kill"] if force else ["stop", "-t", "4"]
        while proc.poll() is None:
            if subprocess.run([executable(), *verb, name], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)

    def explain(self, job: Job, code: int, tail: list[str]) -> str:
        if any("failed to exec pid1: No such file" in line for line in tail[-3:]):  # catatonit's words
            return f"command {job.argv[0]!r} not found in the image of step {job.step!r}"
        return ""

    def interrupt(self, force: bool) -> None:
        with self._lock:
            self._cancelled = True
            self._forced = self._forced or force
            active = list(self._active.items())
        threads = [threading.Thread(target=self._stop, args=(name, proc, force), daemon=True) for name, proc in active]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=12)

    def end(self) -> None:
        with self._lock:
            after, self._after = self._after, []
        for thread in after:
            thread.join()
        self._watchdog.close()
