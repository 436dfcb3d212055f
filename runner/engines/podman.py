"""Podman engine: rootless and daemonless, for machines without Docker. Images are made through Podman's
Docker-compatible REST API (`podman system service`) by the Docker engine's builder: the same Dockerfiles, content
tags, labels and build logs. The service is this process's own, on a private socket, started when a build, pull,
push, save or load needs it and stopped when the process ends (it also stops itself 10 s after its last request, so
a runner killed outright leaves none behind). Steps run with the `podman` CLI, which starts them faster than the
service does (PodmanRunner), and a run that only checks its images asks `podman images` once.

What rootless Podman changes, and what this engine does about it:
- Steps run as the container's root, which rootless Podman maps to you: output files are yours, never a subordinate
  uid's. (`--userns=keep-id` would do the same, but Podman then makes a chowned copy of every image it runs, the
  torch image included, and with the `vfs` driver it cannot run at all.) Capabilities are still all dropped.
- With cgroup v1 (no delegation) Podman cannot limit a rootless container's cpus, memory or processes: a step with
  such limits gets a one-line note, and time limits still apply (itwin-run enforces them)."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner import ui
from runner.checks import Check, free_space, registries
from runner.engines.base import Cancelled, Engine, GpuShare, Job, Made, host_gpus, time_limit
from runner.engines.docker import DockerBuilder, inventory
from runner.engines.docker.client import SHM_SIZE, UNPRIVILEGED, security_options
from runner.engines.watchdog import Watchdog
from runner.errors import UserError
from runner.images import LABEL

IDLE_S = 10  # the service stops itself after this long without a request
INSTALL = "install Podman: apt-get install podman uidmap slirp4netns fuse-overlayfs catatonit (Debian/Ubuntu)"
OVERLAY = ('~/.config/containers/storage.conf: [storage] driver = "overlay" (Linux 5.13 or later; on an older kernel, '
           'also mount_program = "/usr/bin/fuse-overlayfs" under [storage.options.overlay]); then `podman system reset`')


def rootless_overlay() -> bool:
    """Whether this kernel mounts overlay for rootless Podman itself (Linux 5.13 and later)."""
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    return release >= (5, 13)

_lock = threading.Lock()
_service: dict[str, Any] = {}  # proc, address, where: this process's service


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
    """Whether Podman can limit cpus, memory and processes here: as root, or rootless on cgroup v2 (asked of the
    file system: `podman info` takes 0.4 s)."""
    return not rootless() or Path("/sys/fs/cgroup/cgroup.controllers").exists()


def images() -> dict[str, str]:
    """Every local image's id by each of its names, as records name them (`podman images`: one call)."""
    listed = subprocess.run([executable(), "images", "--format", "json"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise UserError(f"podman images failed: {(listed.stderr.strip().splitlines() or ['no output'])[-1]}")
    out = {}
    for image in json.loads(listed.stdout or "[]"):
        for name in [*(image.get("Names") or []), *(image.get("RepoDigests") or [])]:
            out[inventory.familiar(name)] = f"sha256:{image['Id']}"
        out[image["Id"]] = out[f"sha256:{image['Id']}"] = f"sha256:{image['Id']}"
    return out


class PodmanBuilder(DockerBuilder):
    name = "podman"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._images: dict[str, str] | None = None

    def daemon(self) -> str | None:
        return service()

    @property
    def client(self) -> Any:
        self._images = None  # what goes through the service may change the images
        return super().client

    def identity(self, ref: str) -> str | None:
        if self._images is None:
            self._images = images()
        return self._images.get(inventory.familiar(ref))

    def bootstrap_parent(self) -> str:
        if rootless():
            raise UserError("a parent image cannot be bootstrapped without root (debootstrap): load one instead "
                            "(`itwin-run load --engine podman DIR` of a `build --save`, or `podman load`/`pull` "
                            "python:3.11-slim)")
        return super().bootstrap_parent()


class PodmanRunner:
    """Runs each step with `podman run` (the CLI: a step starts in about 0.2 s, where the service's create, start,
    wait and remove took about 0.55 s, and the service itself 0.6 s to start: bench/podman.py). The container gets
    Docker's options: the mount policy's binds at their host paths, no capabilities, no new privileges, an init, and
    the pids, cpus and memory limits where Podman can apply them; it is removed when it ends."""

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
    if driver == "overlay" and fuse and rootless_overlay():
        checks.append(Check(area, None, f"storage driver overlay through {fuse}: every build step's layer is found by "
                                        "comparing the whole image, slow for one as large as torch's; Linux "
                                        f"{os.uname().release} mounts overlay for rootless Podman itself: drop "
                                        "mount_program from ~/.config/containers/storage.conf, then `podman system "
                                        "reset`"))
    elif driver == "overlay":
        checks.append(Check(area, True, "storage driver overlay" + (f" through {fuse}" if fuse else " (the kernel's)")))
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


def guarded() -> list[tuple[Path, str]]:
    """Podman's sockets (CONTAINER_HOST's too) and storage, as root and rootless."""
    sockets = [Path("/run/podman/podman.sock")]
    if os.environ.get("XDG_RUNTIME_DIR"):
        sockets.append(Path(os.environ["XDG_RUNTIME_DIR"], "podman", "podman.sock"))
    if os.environ.get("CONTAINER_HOST", "").startswith("unix://"):
        sockets.append(Path(os.environ["CONTAINER_HOST"].removeprefix("unix://")))
    return [(p, "Podman's socket") for p in sockets] + [
        (p, "Podman's storage") for p in (Path("/var/lib/containers"), Path.home() / ".local/share/containers")]


def credentials() -> set[str]:
    """Where `podman login` writes (REGISTRY_AUTH_FILE, else XDG_RUNTIME_DIR's auth.json), and what it reads too."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    files = [Path(os.environ["REGISTRY_AUTH_FILE"])] if os.environ.get("REGISTRY_AUTH_FILE") else []
    files += [Path(run, "containers/auth.json")] if run else []
    return registries(*files, Path.home() / ".config/containers/auth.json") | inventory.credentials()


ENGINE = Engine(name="podman", builder=PodmanBuilder, runner=PodmanRunner, made=made, remove=remove, doctor=doctor,
                guarded=guarded, login="podman login {host}", credentials=credentials)
