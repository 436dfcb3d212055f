"""What the Docker engine made on this machine (`images`, `prune`) and what it needs of it (`doctor`)."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import docker.errors

from runner.checks import registries
from runner.engines.base import Made
from runner.engines.docker.client import client, daemon_error
from runner.errors import UserError
from runner.images import LABEL


def doctor(needs_gpu: bool) -> list:
    """The Docker side of `itwin-run doctor`."""
    import grp
    import shutil

    from runner.checks import Check, free_space

    area = "docker"
    try:
        info = client().info()
        version = client().version().get("Version", "?")
    except UserError:
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return [Check(area, False, f"no Docker daemon answers at {host}",
                      "start dockerd (as root: `dockerd &`, or `make engine`) or point DOCKER_HOST at a running one")]
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    checks = [Check(area, True, f"daemon {version} answers at {host}")]
    if os.getuid() == 0:
        checks.append(Check(area, None, "you are root: steps run as the project's owner, or nobody (see README)"))
    else:
        try:
            member = "docker" in [grp.getgrgid(g).gr_name for g in os.getgroups()]
        except KeyError:
            member = False
        checks.append(Check(area, None, "you are in the docker group" if member else "rootless or socket access"))
    gpus = "nvidia" in info.get("Runtimes", {})
    smi = shutil.which("nvidia-smi")
    checks.append(Check(area, gpus if needs_gpu else None,
                        "NVIDIA runtime present" + (" and nvidia-smi found" if smi else "") if gpus else
                        "no NVIDIA runtime: steps get no GPU", "install nvidia-container-toolkit and restart dockerd"))
    root_dir = Path(info.get("DockerRootDir", "/var/lib/docker"))
    if root_dir.exists():
        checks.append(free_space(area, root_dir, "images"))
    return checks


def familiar(ref: str) -> str:
    """A reference as Docker shows it and records name it: Podman says docker.io/NAME for what it built and
    localhost/NAME for what it loaded."""
    for prefix in ("localhost/", "docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    return ref


def made(host: str | None = None, engine: str = "docker") -> list[Made]:
    """The images itwin-run made (its label): by tag; an image pulled by digest only (a pin file's) by its digest;
    else untagged (what an interrupted build left). `host`: another engine's Docker-compatible service."""
    api = client(host).api
    try:  # Docker's df: sizes without the layers an image shares with others, and container counts (Podman's df
        # has neither names nor labels: its image list, with whole sizes)
        rows = api.images(filters={"label": f"{LABEL}.managed=1"}) if host else api.df().get("Images")
    except docker.errors.DockerException as exc:
        raise daemon_error(exc) from None
    out = []
    for img in rows or []:
        if (img.get("Labels") or {}).get(f"{LABEL}.managed") != "1":
            continue
        tags = [familiar(t) for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        own = max(0, int(img.get("Size") or 0) - max(0, int(img.get("SharedSize") or 0)))
        names = tags or [d for d in img.get("RepoDigests") or [] if "@sha256:" in d and not d.startswith("<none>")]
        needs = (img.get("Labels") or {}).get(f"{LABEL}.dependencies")
        for i, ref in enumerate(names or [f"<none>@{img['Id'][7:19]}"]):
            out.append(Made(engine, ref, own if i == 0 else 0, float(img.get("Created") or 0),
                            key=ref if names else img["Id"], stage=not names,
                            busy=int(img.get("Containers") or 0) > 0, needs=needs))
    return out


def remove(item: Made, host: str | None = None) -> None:
    try:
        client(host).api.remove_image(item.key, noprune=False)
    except docker.errors.APIError as exc:
        raise UserError(f"{item.engine}: cannot remove {item.ref}: {exc.explanation or exc}") from None


def guarded() -> list[tuple[Path, str]]:
    """Docker's sockets (DOCKER_HOST's too) and storage: a container that mounts one commands the host's Docker."""
    sockets = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        sockets.append(host.removeprefix("unix://"))
    return [(Path(p), "the Docker daemon's socket") for p in sockets] + [
        (Path(p), "the Docker daemon's storage") for p in ("/var/lib/docker", "/var/lib/containerd")]


def config() -> Path:
    """Docker's client settings, where `docker login` keeps credentials (DOCKER_CONFIG, else ~/.docker)."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def credentials() -> set[str]:
    return registries(config())
