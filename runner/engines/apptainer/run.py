"""ApptainerRunner: a step as `apptainer exec` of its SIF."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runner import ui
from runner.engines.apptainer.tool import (
    executable,
)
from runner.engines.base import Cancelled, Job, allocated_gpus, image_parts, time_limit
from runner.engines.watchdog import Watchdog
from runner.errors import UserError


class ApptainerRunner:
    """Steps as `apptainer exec` with --cleanenv --containall (and --no-privs as root): as the caller, the
    project read-only, inputs read-only, the output read-write, all at their host paths."""

    name = "apptainer"
    cwltool_args = ["--singularity"]  # cwltool's Singularity/Apptainer support; dockerImageId is the SIF path
    # cwltool binds a Singularity tool's output directory as its HOME, which a dockerOutputDirectory under a path
    # Apptainer shares from the host (/tmp, the project) does not reach: outputs stay at cwltool's own path.
    cwl_output_at_dataset = False

    def __init__(self) -> None:
        self.exe = executable()
        self._lock = threading.Lock()
        self._cancelled = False
        self._noted = False
        self._watchdog = Watchdog()
        self._procs: set[subprocess.Popen] = set()  # the apptainer processes of this run's steps still running

    def default_user(self, root: Path) -> str:
        return f"{os.getuid()}:{os.getgid()}"  # apptainer runs as the caller; as root, without privileges

    def begin(self, labels: dict[str, str]) -> None:
        pass

    def explain(self, job: Job, code: int, tail: list[str]) -> str:
        missing = next((m.group(1) for ln in tail[-3:] if (m := re.search(r'"([^"]+)": executable file not found', ln))),
                       None)
        return f"command {missing!r} not found in the image of step {job.step!r} ($PATH of the SIF)" if missing else ""

    def interrupt(self, force: bool) -> None:
        """SIGTERM (SIGKILL when forced) to the apptainer processes of this run's steps; none starts after this."""
        with self._lock:
            self._cancelled = True
            for proc in self._procs:  # os.kill, not send_signal: its poll() could reap what run() waits for
                try:
                    os.kill(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def end(self) -> None:
        self._watchdog.close()

    def clean(self, over: Callable[[str], bool]) -> None:
        pass  # a killed runner's steps went with their process groups (the watchdog)

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        me = f"{os.getuid()}:{os.getgid()}"
        if job.user != me:
            raise UserError(f"step {job.step!r}: apptainer runs steps as the calling user ({me}); "
                            f"--user {job.user} needs the Docker engine")
        for part in image_parts(job.image):  # a node that does not see the cache: one line, before apptainer's own
            if not os.access(part, os.R_OK):
                raise UserError(f"step {job.step!r}: cannot read {part} on {os.uname().nodename}: its SIF cache must be "
                                "on a filesystem every node mounts at the same path (ITWIN_RUN_SIF_CACHE), or the SIFs "
                                "loaded on this node (`itwin-run load`)")
        options = ["--cleanenv", "--containall", "--pwd", str(job.workdir)]
        if os.getuid() == 0:
            options.append("--no-privs")
        for m in job.mounts:
            options += ["--bind", f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"]
        for key, value in job.env.items():
            options += ["--env", f"{key}={value}"]
        if job.gpus:
            options.append("--nv")
            for key, value in allocated_gpus(job.gpus, os.environ).items():
                if key not in job.env:  # --cleanenv would hide the allocation: the step saw every GPU of the node
                    options += ["--env", f"{key}={value}"]
        options += self._limits(job)
        with self._lock:
            if self._cancelled:
                raise Cancelled(job.step)
            # Our own process (not spython's stream): its pid is what the time limit stops and what wait4 measures.
            *overlays, image = reversed(image_parts(job.image))
            options += [f for o in overlays for f in ("--overlay", f"{o}:ro")]
            # a process group of its own, which the watchdog kills should this process die without stopping it
            proc = subprocess.Popen([self.exe, "--quiet", "exec", *options, image, *job.argv],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
            self._watchdog.group(proc.pid)
            self._procs.add(proc)
        started = time.monotonic()
        exited = threading.Event()
        timer = time_limit(job, lambda: self._stop(proc, exited))
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        finally:
            with self._lock:
                self._procs.discard(proc)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        exited.set()
        self._watchdog.release(proc.pid)
        if timer:
            timer.cancel()
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's way (137 for SIGKILL)
        peak = rusage.ru_maxrss * 1024  # the largest process of the step's tree
        job.usage.update(wall_s=round(time.monotonic() - started, 3), cpu_s=rusage.ru_utime + rusage.ru_stime,
                         peak_memory=peak)
        limit = job.limits.memory_bytes
        if code == 137 and limit and "killed" not in job.usage and peak >= 0.9 * limit:
            job.usage["killed"] = f"out of memory (limit {job.limits.memory})"
        return code

    def _limits(self, job: Job) -> list[str]:
        """--cpus / --memory: Apptainer enforces them through cgroups, as root or under cgroups v2 (systemd)."""
        if not (job.limits.cpus or job.limits.memory):
            return []
        if os.getuid() != 0 and not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
            if not self._noted:
                self._noted = True
                ui.say("note: apptainer enforces --cpus/--memory only as root or with cgroups v2: not applied "
                       "(the time limit is)", "yellow")
            return []
        return ([f"--cpus={job.limits.cpus}"] if job.limits.cpus else []) + (
            [f"--memory={job.limits.memory_bytes}"] if job.limits.memory else [])

    @staticmethod
    def _stop(proc: subprocess.Popen, exited: threading.Event) -> None:
        proc.terminate()
        if not exited.wait(3):  # apptainer passes SIGTERM on; a step that ignores it gets SIGKILL
            proc.kill()
