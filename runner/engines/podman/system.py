"""This process's Podman service (`podman system service` on a private socket: its Docker-compatible API, through
which images are made) and the `podman` CLI's quick answers: images, info, what rootless Podman can do here."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from runner.engines.base import scratch
from runner.engines.docker import inventory
from runner.engines.docker.client import client
from runner.errors import UserError

IDLE_S = 10  # the service stops itself after this long without a request
INSTALL = "install Podman: apt-get install podman uidmap slirp4netns fuse-overlayfs catatonit (Debian/Ubuntu)"


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
    """The address of this process's Podman service, started on first use: one that dies or fails before it answers
    is started once more, and the second failure says what Podman said."""
    with _lock:
        proc = _service.get("proc")
        if proc is not None and proc.poll() is None:
            return _service["address"]
        try:
            proc, where = start_service()
        except UserError:
            proc, where = start_service()
        if not _service:
            atexit.register(stop)
        _service.update(proc=proc, address=f"unix://{where / 'api.sock'}", where=where)
        return _service["address"]


def start_service() -> tuple[subprocess.Popen, Path]:
    """A Podman service on a private socket, with this process's client connected to it (at the API version its
    /_ping names: docker-py would otherwise ask /version, which takes Podman 0.4 s)."""
    where = scratch(Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()), "itwin-podman")
    path, log = where / "api.sock", where / "service.log"
    with open(log, "w") as err:  # Podman's own warnings go there, not between the run's lines
        proc = subprocess.Popen([executable(), "system", "service", f"--time={IDLE_S}", f"unix://{path}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)  # Ctrl-C reaches the run, which stops the steps first
    end = time.monotonic() + 30
    while not path.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    try:
        client(f"unix://{path}", version=api_version(path))
        return proc, where
    except (OSError, http.client.HTTPException, UserError) as exc:
        try:  # one that gave up is on its way out: what it says on the way, first (a kill would cut it off)
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        said = (log.read_text().strip().splitlines() or [f"{exc.__class__.__name__}: {exc}"])[-1]
        shutil.rmtree(where, ignore_errors=True)
        raise UserError(f"podman system service did not start: {said}") from None


def api_version(path: Path) -> str:
    """The Docker API version the service at the socket `path` speaks, from its /_ping."""
    conn = http.client.HTTPConnection("podman", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(60)
    conn.sock.connect(str(path))
    try:
        conn.request("GET", "/_ping")
        answer = conn.getresponse()
        if answer.status != 200 or not answer.getheader("Api-Version"):
            raise UserError(f"its /_ping answered {answer.status} {answer.read()[:200]!r}")
        return answer.getheader("Api-Version", "")
    finally:
        conn.close()


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


