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

import os
import shutil
from pathlib import Path
from typing import Any

from runner.checks import Check, free_space, registries
from runner.engines.base import Engine, Made
from runner.engines.docker import DockerBuilder, inventory
from runner.engines.podman.run import PodmanRunner
from runner.engines.podman.system import INSTALL, images, info, rootless, rootless_overlay, service, stop
from runner.errors import UserError

OVERLAY = ('~/.config/containers/storage.conf: [storage] driver = "overlay" (Linux 5.13 or later; on an older kernel, '
           'also mount_program = "/usr/bin/fuse-overlayfs" under [storage.options.overlay]); then `podman system reset`')


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

__all__ = ["ENGINE", "PodmanBuilder", "PodmanRunner", "service", "stop"]
