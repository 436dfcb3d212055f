"""DockerRunner: a step as a container (the caller's uid, no capabilities, the mount policy's binds)."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runner import accounting
from runner.engines.base import Cancelled, GpuShare, Job, host_gpus, time_limit
from runner.engines.docker.client import (
    GONE,
    SHM_SIZE,
    UNPRIVILEGED,
    Waiter,
    answers,
    client,
    going_away,
    gpu_requests,
    image_id,
    lost,
    security_options,
)
from runner.engines.docker.holder import NetworkHolder
from runner.engines.watchdog import Watchdog
from runner.errors import UserError
from runner.images import LABEL


class DockerRunner:
    """Runs steps as containers: the caller's uid (an unprivileged one when root), no capabilities, the project
    read-only, inputs read-only, the output read-write, all at their host paths; the run's steps share one network
    namespace (see NetworkHolder)."""

    name = "docker"
    cwltool_args: list[str] = []
    cwl_output_at_dataset = True  # DockerRequirement.dockerOutputDirectory

    def __init__(self) -> None:
        self._holder: NetworkHolder | None = None
        self._labels: dict[str, str] = {}
        self._holder_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _active and _cancelled: no container starts after interrupt()
        self._active: set[str] = set()
        self._removals: list[threading.Thread] = []  # of the containers of steps that ended
        self._cancelled = False
        self._forced = False
        self._cgroup_v: int | None = -1  # not asked yet
        self._watchdog = Watchdog()  # removes the run's containers should this process be killed outright
        self._watched = False
        self._gpus = GpuShare()
        # Containers made ahead (prepare()), by step: the job they were made for, its container and cgroup parent;
        # an event set once prepare() is through with the step, whether it made one or not.
        self._made: dict[str, threading.Event] = {}
        self._ready: dict[str, tuple[Job, str, accounting.Parent | None]] = {}

    def default_user(self, root: Path) -> str:
        """Your uid:gid; when you are root, the project directory's owner, or nobody (65534) for a root-owned
        project: a workflow file gets no root in its containers unless `--user 0:0` asks for it."""
        if os.getuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        st = root.stat()
        return f"{st.st_uid}:{st.st_gid}" if st.st_uid != 0 else UNPRIVILEGED

    def daemon(self) -> str | None:
        """The daemon's address: None for DOCKER_HOST's (an engine on a Docker-compatible service overrides it)."""
        return None

    def _api(self) -> Any:
        return client(self.daemon()).api

    # ------------------------------------------------------------ running

    def begin(self, labels: dict[str, str]) -> None:
        self._labels = labels

    def _watch(self) -> None:
        """Before the run's first container: its watchdog, to remove them all should this process die."""
        if self._labels and not self._watched:
            self._watched = True
            self._watchdog.containers(self._labels, self.daemon())

    def _network(self, image: str) -> str | None:
        """The run's network holder, started with the run's first step: a run whose steps are all up to
        date starts no container. It runs the base image (any step image will do where there is none)."""
        with self._holder_lock:
            if self._holder is None:
                self._watch()
                labels = {f"{LABEL}.managed": "1", f"{LABEL}.role": "network", **self._labels}
                holder_image = "itwin-run/base:latest" if image_id("itwin-run/base:latest", self.daemon()) else image
                self._holder = NetworkHolder(self._api(), holder_image, labels)
        return self._holder.network_mode()

    def end(self) -> None:
        with self._lock:  # the executor prepares nothing more once it ends the run
            made, self._made = list(self._made.values()), {}
        for event in made:
            event.wait()
        with self._lock:
            removals, self._removals = self._removals, []
            unused, self._ready = list(self._ready.values()), {}
        for _, cid, parent in unused:  # made for steps that did not run (upstream failed, interrupted, up to date)
            self._remove(cid, parent)
        for removal in removals:
            removal.join()
        if self._holder is not None:
            self._holder.remove(wait=self._cancelled)
            self._holder = None
        self._watchdog.close()

    def clean(self, over: Callable[[str], bool]) -> None:
        api = self._api()
        mine = self._labels.get(f"{LABEL}.run")
        if v := self.cgroup_version():
            accounting.remove_abandoned(v)  # the cgroup parents of containers the removals below do not reach
        try:
            left = api.containers(all=True, filters={"label": [f"{LABEL}.managed=1", f"{LABEL}.run"]})
        except GONE:
            return  # no daemon to ask: the step that needs it says so
        for c in left:
            run = c["Labels"].get(f"{LABEL}.run")
            if run and run != mine and over(run):
                try:
                    api.remove_container(c["Id"], force=True)
                except GONE:
                    pass  # removed already

    def explain(self, job: Job, code: int, tail: list[str]) -> str:
        missing = next((m.group(1) for ln in tail[-3:] if (m := re.search(r"exec (\S+) failed: No such file", ln))), None)
        if code != 127 or not missing:
            return ""
        try:
            env = self._api().inspect_image(job.image)["Config"].get("Env") or []
        except docker.errors.DockerException:
            env = []
        path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), "?")
        return f"command {missing!r} not found in the image of step {job.step!r} (PATH {path})"

    def interrupt(self, force: bool) -> None:
        """Stop the run's containers, started or only created, and start no new one."""
        with self._lock:
            self._cancelled = True
            self._forced = self._forced or force
            ids = list(self._active)
        api = self._api()
        filters = {"label": [f"{k}={v}" for k, v in self._labels.items()]}
        try:
            if self._labels:  # and any a step thread has not registered yet
                ids += [c["Id"] for c in api.containers(all=True, filters=filters)
                        if c["Labels"].get(f"{LABEL}.role") != "network" and c["Id"] not in ids]
        except GONE:
            pass  # the daemon went away: so did the containers' processes
        threads = [threading.Thread(target=self._stop, args=(cid, force), daemon=True) for cid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=12)

    def _stop(self, cid: str, force: bool) -> None:
        try:
            if force:
                self._api().kill(cid)
            else:
                self._api().stop(cid, timeout=4)
        except GONE:
            pass  # gone already, or never started, or the daemon went away

    def cgroup_version(self) -> int | None:
        """The cgroup version to measure steps with, where the daemon is on this machine (a unix socket); None: not
        measured. A daemon with the systemd cgroup driver refuses the parent (it takes slices): see run()."""
        if self._cgroup_v == -1:
            local = self._api().base_url.startswith("http+docker://localhost")
            self._cgroup_v = accounting.version() if accounting.enabled() and local else None
        return self._cgroup_v

    @staticmethod
    def limit_options(job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if job.limits.cpus:
            out["nano_cpus"] = int(job.limits.cpus * 1e9)
        if job.limits.memory:
            out["mem_limit"] = out["memswap_limit"] = job.limits.memory_bytes  # and no swap beyond it
        return out

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        # no allocation names the GPUs (a workstation): a count gets the least busy of the node's
        alone = isinstance(job.gpus, int) and job.gpus and host_gpus(job.gpus, os.environ) is None
        taken = self._gpus.take(job.gpus) if alone else None  # type: ignore[arg-type]
        try:
            code = self._run(job, on_line, taken)
        except (Cancelled, UserError):
            raise
        except Exception:  # the connection's end, whatever layer saw it: one line when the daemon went away
            if answers(self.daemon()):
                raise
            raise lost(job.step, self.daemon()) from None
        finally:
            if taken:
                self._gpus.give(taken)
        if code in (137, 143) and not self._cancelled and "killed" not in job.usage and going_away(host=self.daemon()):
            raise lost(job.step, self.daemon())  # a daemon that shuts down stops its containers first
        return code

    def prepare(self, job: Job) -> None:
        """Create the container of a step that runs next (once the running ones end), so that its run() is one
        `start` call. Not for a step that asks for GPUs (run() picks them), nor where a mount is not there yet;
        what run() does not take, end() removes. An error here is left for the step's own run() to say."""
        if job.gpus or not self._labels or not all(m.source.exists() for m in job.mounts):
            return
        done = threading.Event()
        with self._lock:
            if self._cancelled or job.step in self._made:
                return
            self._made[job.step] = done
        try:
            api = self._api()
            network = self._network(job.image)
            v = self.cgroup_version()
            cid, parent = self._create(api, job, None, network, accounting.Parent(v) if v else None)
            with self._lock:
                self._ready[job.step] = (dataclasses.replace(job, usage={}), cid, parent)
        except Exception:  # Cancelled, the daemon's refusal: run() tries again, and says why
            pass
        finally:
            done.set()

    def _made_ahead(self, job: Job) -> tuple[str, accounting.Parent | None] | None:
        """The container prepare() made for this job, if it made one for the same job (a retry gets a new one)."""
        with self._lock:
            done = self._made.get(job.step)
        if done is not None:
            done.wait()
        with self._lock:
            made, cid, parent = self._ready.pop(job.step, (None, "", None))
        if made is None:
            return None
        if made == dataclasses.replace(job, usage={}):
            return cid, parent
        with self._lock:
            self._active.discard(cid)
        self._remove(cid, parent)
        return None

    def _run(self, job: Job, on_line: Callable[[str], None], gpus: list[str] | None) -> int:
        api = self._api()
        self._watch()
        network = self._network(job.image) if self._labels else None
        v = self.cgroup_version()
        made = None if gpus else self._made_ahead(job)
        cid, parent = made or self._create(api, job, gpus, network, accounting.Parent(v) if v else None)
        try:
            if network and self._holder is not None and not self._holder.running():
                with self._lock:  # the holder could not start: this step gets a network of its own
                    self._active.discard(cid)
                self._remove(cid, None)
                cid, parent = self._create(api, job, gpus, None, parent)
            with self._lock:
                if self._cancelled:  # while the holder started
                    raise Cancelled(job.step)
            self._start(api, job, cid)
            started = time.monotonic()
            timer = time_limit(job, lambda: self._stop(cid, force=True))
            with self._lock:
                cancelled, forced = self._cancelled, self._forced
            if cancelled:  # interrupt() came between create and start: it could not stop what had not started
                self._stop(cid, forced)
            code = self._stream(api, cid, on_line)
            job.usage["wall_s"] = round(time.monotonic() - started, 3)
            if timer:
                timer.cancel()
            if code and job.limits.memory and "killed" not in job.usage and self._oom_killed(api, cid, code):
                job.usage["killed"] = f"out of memory (limit {job.limits.memory})"
            return code
        finally:
            with self._lock:
                self._active.discard(cid)
            if parent:
                job.usage.update(parent.read())  # the container has ended (or never started): its cgroup is done
            # Off the step's path: the next step need not wait for this removal; end() does.
            removal = threading.Thread(target=self._remove, args=(cid, parent), daemon=True)
            removal.start()
            with self._lock:
                self._removals.append(removal)

    @staticmethod
    def _oom_killed(api: Any, cid: str, code: int) -> bool:
        """Whether the kernel's OOM killer ended the container. The daemon learns it from an event of its own that
        may come after the exit, on a busy machine: a SIGKILL (137) is asked again for up to a second."""
        for attempt in range(10 if code == 137 else 1):
            time.sleep(0.1 if attempt else 0)
            try:
                if api.inspect_container(cid)["State"].get("OOMKilled"):
                    return True
            except docker.errors.APIError:
                return False
        return False

    def _create(self, api: Any, job: Job, gpus: list[str] | None, network: str | None,
                parent: accounting.Parent | None) -> tuple[str, accounting.Parent | None]:
        """The step's container, created (not after interrupt()), and the cgroup parent it is measured in: none
        where the daemon's cgroup driver refuses one (systemd), from then on."""
        binds = {str(m.source): {"bind": str(m.target), "mode": "ro" if m.read_only else "rw"} for m in job.mounts}

        def create() -> str:
            host_config = api.create_host_config(
                binds=binds, shm_size=SHM_SIZE, device_requests=gpu_requests(job.gpus, ids=gpus) or None, init=True,
                network_mode=network, cgroup_parent=parent.path if parent else None, **self.limit_options(job),
                **security_options())
            return api.create_container(
                job.image, command=job.argv, user=job.user, working_dir=str(job.workdir), environment=job.env,
                labels={f"{LABEL}.managed": "1", **job.labels}, host_config=host_config, detach=True)["Id"]

        with self._lock:
            if self._cancelled:
                raise Cancelled(job.step)
        try:  # not holding the lock: a step that starts meanwhile need not wait for the next one's create
            try:
                cid = create()
            except docker.errors.APIError as exc:
                if not parent or "cgroup" not in str(exc.explanation or exc).lower():
                    raise
                self._cgroup_v = None  # the systemd driver: no cgroup parent, no measuring, from now on
                parent = None
                cid = create()
        except docker.errors.ImageNotFound:
            raise UserError(f"step {job.step!r}: image {job.image} is not present (build it first)") from None
        except docker.errors.APIError as exc:
            raise UserError(f"step {job.step!r}: {self.name} could not create the container: "
                            f"{exc.explanation or exc}") from None
        with self._lock:
            if not self._cancelled:
                self._active.add(cid)
                return cid, parent
        self._remove(cid, parent)  # interrupt() came while it was made
        raise Cancelled(job.step)

    def _start(self, api: Any, job: Job, cid: str) -> None:
        try:
            api.start(cid)
        except docker.errors.APIError as exc:
            msg = str(exc.explanation or exc)
            if job.gpus and ("device driver" in msg or "gpu" in msg.lower()):
                raise UserError(f"step {job.step!r} asks for GPUs ({job.gpus}) but this Docker daemon has no "
                                "NVIDIA runtime: install nvidia-container-toolkit and restart dockerd") from None
            raise UserError(f"step {job.step!r}: {self.name} could not start the container: {msg}") from None

    def _stream(self, api: Any, cid: str, on_line: Callable[[str], None]) -> int:
        """The container's output, line by line, until it exits; its exit code. The exit status is asked for while
        the output streams: the daemon answers as soon as the container exits."""
        waiter = Waiter(api, cid)
        pending = b""
        for chunk in self.output(api, cid, waiter):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                on_line(raw.decode("utf-8", "replace"))
        if pending:
            on_line(pending.decode("utf-8", "replace"))
        return waiter.result()

    def output(self, api: Any, cid: str, waiter: Waiter) -> Iterator[bytes]:
        """The container's output as it comes (stdout and stderr), until it exits."""
        return api.logs(cid, stream=True, follow=True)

    def _remove(self, cid: str, parent: accounting.Parent | None) -> None:
        try:
            self._api().remove_container(cid, force=True)
        except GONE:
            pass  # removed already; or the daemon went away (the next run removes it)
        if parent:
            parent.remove()  # once the container (its child cgroup) is gone
