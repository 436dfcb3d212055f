"""Podman engine: rootless and daemonless, for machines without Docker. It talks to Podman the maintained way, its
Docker-compatible REST API (`podman system service`), through the Docker engine's builder and runner: the same
Dockerfiles, content tags, labels, mount policy and safety options. The service is this process's own, on a private
socket, started on first use and stopped when the process ends (it also stops itself 10 s after its last request,
so a runner killed outright leaves no service behind either).

What rootless Podman changes, and what this engine does about it:
- Steps run as the container's root, which rootless Podman maps to you: output files are yours, never a subordinate
  uid's. (`--userns=keep-id` would do the same, but Podman then makes a chowned copy of every image it runs, the
  torch image included, and with the `vfs` driver it cannot run at all.) Capabilities are still all dropped.
- With cgroup v1 (no delegation) Podman cannot limit a rootless container's cpus or memory, nor report its usage: a
  step with such limits gets a one-line note, and time limits still apply (itwin-run enforces them)."""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner import ui
from runner.checks import Check, free_space
from runner.engines.base import Engine, Job, Made
from runner.engines.docker import DockerBuilder, DockerRunner, inventory
from runner.engines.docker.client import Waiter
from runner.errors import UserError

IDLE_S = 10  # the service stops itself after this long without a request
INSTALL = "install Podman: apt-get install podman uidmap slirp4netns fuse-overlayfs catatonit (Debian/Ubuntu)"
OVERLAY = ('~/.config/containers/storage.conf: [storage] driver = "overlay" and, under '
           '[storage.options.overlay], mount_program = "/usr/bin/fuse-overlayfs"; then `podman system reset`')

_lock = threading.Lock()
_service: dict[str, Any] = {}  # proc, address, where: this process's service
_cgroups: list[str] = []  # Podman's cgroup version, once asked


def executable() -> str:
    found = shutil.which("podman")
    if not found:
        raise UserError(f"podman is not on PATH: {INSTALL}")
    return found


def rootless() -> bool:
    return os.getuid() != 0


def service() -> str:
    """The address of this process's Podman service, started on first use."""
    with _lock:
        proc = _service.get("proc")
        if proc is not None and proc.poll() is None:
            return _service["address"]
        where = Path(tempfile.mkdtemp(prefix="itwin-podman-", dir=os.environ.get("XDG_RUNTIME_DIR") or None))
        socket, log = where / "api.sock", where / "service.log"
        with open(log, "w") as err:  # Podman's own warnings go there, not between the run's lines
            proc = subprocess.Popen([executable(), "system", "service", f"--time={IDLE_S}", f"unix://{socket}"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)  # Ctrl-C reaches the run, which stops the steps first
        end = time.monotonic() + 30
        while not socket.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.02)
        if not socket.exists():
            proc.kill()
            said = (log.read_text().strip().splitlines() or ["no output"])[-1]
            shutil.rmtree(where, ignore_errors=True)
            raise UserError(f"podman system service did not start: {said}")
        if not _service:
            atexit.register(stop)
        _service.update(proc=proc, address=f"unix://{socket}", where=where)
        return _service["address"]


def stop() -> None:
    """Stop the service (at exit): no daemon outlives the run."""
    with _lock:
        proc, where = _service.pop("proc", None), _service.pop("where", None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if where is not None:
        shutil.rmtree(where, ignore_errors=True)


def info() -> dict[str, Any]:
    """`podman info` (its JSON); UserError when Podman is missing or refuses."""
    proc = subprocess.run([executable(), "info", "--format", "json"], capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"podman info failed: {said}")
    return json.loads(proc.stdout)


def cgroup_limits() -> bool:
    """Whether Podman can limit cpus and memory here: rootful, or rootless on cgroup v2."""
    if not rootless():
        return True
    if not _cgroups:
        _cgroups.append(info().get("host", {}).get("cgroupVersion", "v1"))
    return _cgroups[0] == "v2"


class PodmanBuilder(DockerBuilder):
    name = "podman"

    def daemon(self) -> str | None:
        return service()

    def bootstrap_parent(self) -> str:
        if rootless():
            raise UserError("a parent image cannot be bootstrapped without root (debootstrap): load one instead "
                            "(`itwin-run load --engine podman DIR` of a `build --save`, or `podman load`/`pull` "
                            "python:3.11-slim)")
        return super().bootstrap_parent()


class PodmanRunner(DockerRunner):
    name = "podman"
    cwltool_args = ["--podman"]

    def daemon(self) -> str | None:
        return service()

    def default_user(self, root: Path) -> str:
        return "0:0" if rootless() else super().default_user(root)  # rootless: the container's root is you

    def cgroup_version(self) -> int | None:
        return super().cgroup_version() if cgroup_limits() else None

    def limit_options(self, job: Job) -> dict[str, Any]:
        if cgroup_limits() or not (job.limits.cpus or job.limits.memory):
            return super().limit_options(job)
        ui.say(f"step {job.step}: rootless Podman on cgroup v1 cannot limit cpus, memory or processes (time "
               "limits apply); ask for cgroup v2 with delegation", "yellow", prefix="note:")
        return {}


    def output(self, api: Any, cid: str, waiter: Waiter) -> Iterator[bytes]:
        """Podman 4's service can leave a followed log unanswered when the container exited just before the call
        (seen with steps that take milliseconds): follow it from a thread, and once the container has exited and
        nothing came for a moment, take the rest from the log as it stands."""
        chunks: queue.Queue[bytes | None] = queue.Queue()

        def follow() -> None:
            try:
                for chunk in api.logs(cid, stream=True, follow=True):
                    chunks.put(chunk)
            except Exception:  # the service's or the connection's end: the log as it stands says the rest
                pass
            chunks.put(None)

        threading.Thread(target=follow, daemon=True).start()
        got = 0
        while True:
            try:
                chunk = chunks.get(timeout=0.5)
            except queue.Empty:
                if waiter.is_alive():
                    continue
                rest = api.logs(cid, stream=False)[got:]
                if rest:
                    yield rest
                return
            if chunk is None:
                return
            got += len(chunk)
            yield chunk


def made() -> list[Made]:
    return inventory.made(service(), "podman") if shutil.which("podman") else []


def remove(item: Made) -> None:
    inventory.remove(item, service())


def doctor(needs_gpu: bool) -> list[Check]:
    """Podman's side of `itwin-run doctor`: version, rootless storage, subordinate ids, cgroups, init."""
    area = "podman"
    try:
        facts = info()
    except UserError as exc:
        return [Check(area, False, str(exc), INSTALL)]
    host, store = facts.get("host", {}), facts.get("store", {})
    version = facts.get("version", {}).get("Version", "?")
    mode = "rootless" if host.get("security", {}).get("rootless") else "as root"
    checks = [Check(area, True, f"podman {version}, {mode}")]
    driver = store.get("graphDriverName", "?")
    fuse = (store.get("graphOptions") or {}).get("overlay.mount_program", {}).get("Executable")
    if driver == "overlay":
        checks.append(Check(area, True, "storage driver overlay" + (f" through {fuse}" if fuse else " (native)")))
    else:
        checks.append(Check(area, None, f"storage driver {driver}: it copies a whole image for every container, "
                                        f"the torch image included; switch to overlay in {OVERLAY}"))
    if mode == "rootless":
        ranges = host.get("idMappings", {}).get("uidmap") or []
        checks.append(Check(area, len(ranges) > 1, "subordinate uid/gid ranges: " + (
            f"{sum(r.get('size', 0) for r in ranges[1:])} ids" if len(ranges) > 1 else "none"),
            f"ask an admin for `{os.environ.get('USER', 'you')}:100000:65536` in /etc/subuid and /etc/subgid"))
        v2 = host.get("cgroupVersion") == "v2"
        checks.append(Check(area, None, f"cgroup {host.get('cgroupVersion', '?')}, manager "
                                        f"{host.get('cgroupManager', '?')}: " + (
                                            "cpus and memory limits apply" if v2 else
                                            "no cpus, memory or pids limits for rootless containers (time "
                                            "limits apply); ask an admin for cgroup v2 with delegation")))
    init = any(Path(p).is_file() for p in ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit",
                                          "/usr/libexec/catatonit/catatonit"))
    checks.append(Check(area, init, "catatonit (the steps' init) " + ("found" if init else "missing"), INSTALL))
    if needs_gpu:
        checks.append(Check(area, None, "GPU steps under Podman need the NVIDIA CDI spec "
                                        "(nvidia-ctk cdi generate); not checked here"))
    if store.get("graphRoot"):
        checks.append(free_space(area, Path(store["graphRoot"]), "images"))
    return checks


ENGINE = Engine(name="podman", builder=PodmanBuilder, runner=PodmanRunner, made=made, remove=remove, doctor=doctor)
