"""The Docker daemon, through docker-py: one client per DOCKER_HOST, what a call raises when the daemon goes away,
and what every container of a step gets (security options, GPU requests)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest

from runner.engines.base import host_gpus
from runner.errors import UserError

DEFAULT_PARENT = "python:3.11-slim"
BOOTSTRAP_PARENT = "itwin-run/parent:bookworm"  # made offline by images/bootstrap-parent.sh
SHM_SIZE = "1g"  # DataLoader workers need more than Docker's 64 MB /dev/shm
PIDS_LIMIT = 1024  # processes and threads a step may have (ITWIN_RUN_PIDS_LIMIT): a fork bomb stops there
UNPRIVILEGED = "65534:65534"  # nobody: what steps run as when root starts itwin-run in a root-owned project

def daemon_error(exc: Exception) -> UserError:
    return UserError(f"cannot reach the Docker daemon ({exc.__class__.__name__}): start dockerd "
                     "(as root: `dockerd &`, or `make engine`) or point DOCKER_HOST at a running one")


# What a call to the daemon raises: its refusals, and the connection's end when the daemon goes away mid-run.
GONE = (docker.errors.DockerException, requests.exceptions.RequestException)


def lost(step: str, host: str | None = None) -> UserError:
    if host:  # another engine's Docker-compatible service (Podman's)
        return UserError(f"the container service at {host} stopped answering during step {step!r}: rerun; the next "
                         "run removes what this one left")
    return UserError(f"the Docker daemon stopped answering during step {step!r}: start it again (`dockerd`, "
                     "`systemctl start docker`) and rerun; the next run removes what this one left")


def answers(host: str | None = None) -> bool:
    try:
        client(host).api.ping()
        return True
    except Exception:  # any way of not answering
        return False


def going_away(seconds: float = 3.0, host: str | None = None) -> bool:
    """Whether the daemon stops answering within `seconds` (asked after a step was stopped by no one we know of)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not answers(host):
            return True
        time.sleep(0.2)
    return False


_clients: dict[str, docker.DockerClient] = {}


def client(host: str | None = None, version: str | None = None) -> docker.DockerClient:
    """One docker-py client per daemon, connected on first use: DOCKER_HOST's, or `host` (the address of another
    engine's Docker-compatible service, whose API `version` may be known); one clear line when no daemon answers."""
    key = host or os.environ.get("DOCKER_HOST", "")
    if key not in _clients:
        try:
            c = docker.DockerClient(base_url=host, version=version, timeout=600) if host else docker.from_env(timeout=600)
            c.api.ping()
        except Exception as exc:  # docker-py's and requests' connection errors
            if host:
                said = (str(exc).strip().splitlines() or [""])[0][:300]
                raise UserError(f"the container service at {host} does not answer ({exc.__class__.__name__}: "
                                f"{said})") from None
            raise daemon_error(exc) from None
        _clients[key] = c
    return _clients[key]


def image_id(ref: str, host: str | None = None) -> str | None:
    """The local image's id, or None when the daemon has no such image."""
    try:
        return client(host).api.inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        if exc.status_code == 404 or "no such image" in str(exc).lower():
            return None
        raise UserError(f"docker: {exc.explanation or exc}") from None


def security_options() -> dict[str, Any]:
    """Least privilege for every container itwin-run starts: no capabilities, no new privileges, a pids limit;
    never privileged, no host namespaces."""
    return {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "privileged": False,
            "pids_limit": int(os.environ.get("ITWIN_RUN_PIDS_LIMIT") or PIDS_LIMIT)}


def gpu_requests(gpus: str | int | list[int] | None, env: Mapping[str, str] | None = None,
                 ids: list[str] | None = None) -> list[DeviceRequest]:
    """`gpus:` (all, a count, or device ids) as Docker device requests; where the caller was given GPUs, those of
    them the step asks for (runner.engines.base.host_gpus); `ids`: the node's GPUs chosen for it already."""
    if gpus is None or gpus == 0 or gpus == []:
        return []
    ids = ids or host_gpus(gpus, os.environ if env is None else env)
    if ids is not None:
        return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])] if ids else []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if isinstance(gpus, int):
        return [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]



class Waiter(threading.Thread):
    """`wait` on a container from a thread, so its answer is not a round trip after the log stream ends."""

    def __init__(self, api: Any, cid: str, condition: str = "not-running"):
        super().__init__(daemon=True)
        self.api, self.cid, self.condition = api, cid, condition
        self.code: int | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.code = int(self.api.wait(self.cid, condition=self.condition)["StatusCode"])
        except Exception as exc:  # surfaced in result()
            self.error = exc

    def result(self) -> int:
        self.join()
        if isinstance(self.error, docker.errors.APIError):
            raise UserError(f"docker: lost the container while waiting for it: {self.error}")
        if self.error is not None:
            raise self.error  # the connection's end: the daemon went away (said once, by the step's run())
        assert self.code is not None
        return self.code
