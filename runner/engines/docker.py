"""Docker engine through docker-py (no docker CLI): DockerBuilder makes step images, DockerRunner runs steps."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest

from runner import ui, usage
from runner.engines.base import Cancelled, Engine, Job, Made, time_limit
from runner.engines.watchdog import Watchdog
from runner.errors import UserError
from runner.images import BASE_DOCKERFILE, CA_BUNDLE, LABEL, SOURCE_WHEELS, TEMPLATES, BuildOptions, ImageSpec, Pin

DEFAULT_PARENT = "python:3.11-slim"
BOOTSTRAP_PARENT = "itwin-run/parent:bookworm"  # made offline by images/bootstrap-parent.sh
SHM_SIZE = "1g"  # DataLoader workers need more than Docker's 64 MB /dev/shm
PIDS_LIMIT = 1024  # processes and threads a step may have (ITWIN_RUN_PIDS_LIMIT): a fork bomb stops there
UNPRIVILEGED = "65534:65534"  # nobody: what steps run as when root starts itwin-run in a root-owned project
_ERROR_LINE = re.compile(r"(error|ERROR|E: |No matching distribution|Could not find|failed|returned a non-zero)")


def _daemon_error(exc: Exception) -> UserError:
    return UserError(f"cannot reach the Docker daemon ({exc.__class__.__name__}): start dockerd "
                     "(as root: `dockerd &`, or `make engine`) or point DOCKER_HOST at a running one")


# What a call to the daemon raises: its refusals, and the connection's end when the daemon goes away mid-run.
GONE = (docker.errors.DockerException, requests.exceptions.RequestException)


def _lost(step: str) -> UserError:
    return UserError(f"the Docker daemon stopped answering during step {step!r}: start it again (`dockerd`, "
                     "`systemctl start docker`) and rerun; the next run removes what this one left")


def _answers() -> bool:
    try:
        client().api.ping()
        return True
    except Exception:  # any way of not answering
        return False


def _going_away(seconds: float = 3.0) -> bool:
    """Whether the daemon stops answering within `seconds` (asked after a step was stopped by no one we know of)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _answers():
            return True
        time.sleep(0.2)
    return False


_clients: dict[str, docker.DockerClient] = {}


def client() -> docker.DockerClient:
    """One docker-py client per DOCKER_HOST, connected on first use; one clear line when no daemon answers."""
    key = os.environ.get("DOCKER_HOST", "")
    if key not in _clients:
        try:
            c = docker.from_env(timeout=600)
            c.api.ping()
        except Exception as exc:  # docker-py's and requests' connection errors
            raise _daemon_error(exc) from None
        _clients[key] = c
    return _clients[key]


def image_id(ref: str) -> str | None:
    """The local image's id, or None when the daemon has no such image."""
    try:
        return client().api.inspect_image(ref)["Id"]
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


def gpu_requests(gpus: str | int | list[int] | None) -> list[DeviceRequest]:
    """`gpus:` (all, a count, or device ids) as Docker device requests."""
    if gpus is None or gpus == 0 or gpus == []:
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if isinstance(gpus, int):
        return [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


def _auth() -> dict[str, str] | None:
    """Registry credentials from the environment; without them docker-py uses the Docker config (`docker login`)."""
    user, password = os.environ.get("ITWIN_RUN_REGISTRY_USER"), os.environ.get("ITWIN_RUN_REGISTRY_PASSWORD")
    return {"username": user, "password": password} if user and password else None


def _archive_name(ref: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)


def _split_ref(ref: str) -> tuple[str, str | None]:
    """'host:5000/ns/name:tag' -> ('host:5000/ns/name', 'tag'); digests stay in the repository part."""
    if "@" in ref:
        return ref, None
    name, _, tag = ref.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return ref, "latest"


def _registry_problem(msg: str) -> str:
    low = msg.lower()
    if any(w in low for w in ("unauthorized", "authentication required", "denied", "no basic auth credentials")):
        return f"the registry asks for credentials: `docker login` to it (or set them in the Docker config) [{msg}]"
    if "connection refused" in low or "no such host" in low or "i/o timeout" in low or "dial tcp" in low:
        return f"the registry is unreachable [{msg}]"
    if "not found" in low or "manifest unknown" in low or "does not exist" in low:
        return f"no such image in the registry [{msg}]"
    return msg


_DECISIVE = re.compile(r"(No matching distribution found for .*|Could not find a version that satisfies .*|"
                       r"ResolutionImpossible.*|Cannot install .*|conflicting dependencies.*|No space left on device)")


def _build_error(ref: str, step: str, error: str, lines: list[str], env_file: Path | None) -> str:
    """A failed build in a few lines: pip's decisive line first, naming the user's env file rather than the
    requirements.txt the image was built from, then the lines around the failure."""
    def mine(line: str) -> str:
        if env_file is None:
            return line
        return re.sub(r"-r requirements\.txt \(line (\d+)\)", lambda m: f"{env_file}" + (
            f" (line {m.group(1)})" if env_file.suffix not in (".yml", ".yaml") else ""), line)

    if "no space left on device" in "\n".join(lines).lower():
        return f"build of {ref} for step {step!r} failed: no space left on device (free disk space, e.g. `docker image prune`)"
    decisive = next((m.group(1) for ln in reversed(lines) if (m := _DECISIVE.search(ln))), None)
    head = mine(decisive) if decisive else mine(error.splitlines()[-1] if error else "")
    where = f" (env file {env_file})" if env_file else ""
    # docker's own "The command '/bin/sh -c pip install … -r requirements.txt' returned …" says nothing more
    lines = [ln for ln in lines if not ln.startswith("The command '/bin/sh -c ")] or lines
    failing = [mine(ln) for ln in lines if _ERROR_LINE.search(ln)][-12:] or [mine(ln) for ln in lines[-12:]]
    detail = "\n".join("  " + ln for ln in failing if decisive is None or ln.strip() != head)
    return f"build of {ref} for step {step!r} failed{where}: {head}" + (f"\n{detail}" if detail else "")


class _Waiter(threading.Thread):
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


class _BuildPhase:
    """Which layer a build is at (Dockerfile.pip's stages) and what pip is doing there, from the build's lines."""

    PIP = (("Collecting", "resolving"), ("Downloading", "downloading"), ("Processing", "resolving"),
           ("Building wheel", "building wheels"), ("Installing collected", "installing"),
           ("Successfully installed", "installed"), ("Successfully built", "built"))

    def __init__(self) -> None:
        self.layer, self.pip = "base", ""

    def see(self, line: str) -> None:
        text = line.strip()
        if text.startswith("Step ") and " : " in text:
            instruction = text.split(" : ", 1)[1]
            self.pip = ""
            if "-r requirements.txt" in instruction:
                self.layer = "dependencies"
            elif "build-sources.py" in instruction or "itwin-wheels" in instruction:
                self.layer = "sources"
            elif instruction.startswith("COPY --from=deps"):
                self.layer = "dependencies (copy)"
            elif instruction.startswith("RUN"):
                self.layer = instruction[4:40]
            return
        for prefix, phase in self.PIP:
            if text.startswith(prefix):
                self.pip = phase

    def __str__(self) -> str:
        return f"{self.layer} layer" + (f", pip {self.pip}" if self.pip else "")


class _Pod:
    """A sleeping container whose network namespace every step of a run joins (as a Kubernetes pod's containers
    do): steps keep Docker's default bridge networking, and a step's start skips setting up a network of its own,
    which is most of what a short step costs. The first step's container is created while the pod starts."""

    def __init__(self, api: Any, image: str, labels: dict[str, str]):
        self.api, self.id, self.error = api, "", ""
        self._created = threading.Event()
        self._thread = threading.Thread(target=self._start, args=(image, labels), daemon=True)
        self._thread.start()

    def _start(self, image: str, labels: dict[str, str]) -> None:
        try:
            host = self.api.create_host_config(init=True, auto_remove=True, **security_options())
            self.id = self.api.create_container(image, command=["sleep", "infinity"], user=UNPRIVILEGED, labels=labels,
                                                host_config=host, detach=True)["Id"]
            self._created.set()
            self.api.start(self.id)
        except GONE as exc:
            self.error = str(exc)
        finally:
            self._created.set()

    def network_mode(self) -> str | None:
        """`container:ID` once the pod exists (a container may be created before the pod runs, not started: see
        running()); None (each step gets its own network) if it could not be created."""
        self._created.wait()
        return f"container:{self.id}" if self.id and not self.error else None

    def running(self) -> bool:
        """Whether the pod started (waits for it): a step that joins it starts after."""
        self._thread.join()
        return bool(self.id) and not self.error

    def remove(self, wait: bool = False) -> None:
        """Stop it; the daemon removes it (auto-remove), so a run that ends well need not wait for that (`wait`: an
        interrupted one does, so that nothing of it is left when it exits). SIGTERM, not SIGKILL: the daemon answers
        a SIGKILL only once the container is down, a SIGTERM at once (tini passes it to `sleep`, which ends at it)."""
        self._thread.join()
        if not self.id:
            return
        try:
            if wait:
                gone = _Waiter(self.api, self.id, condition="removed")
            self.api.kill(self.id, signal="SIGTERM")
            if wait:
                gone.join(timeout=10)
        except GONE:
            try:
                self.api.remove_container(self.id, force=True)
            except GONE:
                pass


class DockerBuilder:
    name = "docker"

    def __init__(self, parent: str | None = None, verbose: bool = False):
        self.parent = parent or os.environ.get("ITWIN_RUN_BASE_PARENT") or None
        self.verbose = verbose
        self._base: tuple[str, str] | None = None

    @property
    def client(self) -> docker.DockerClient:
        return client()

    def _image_id(self, ref: str) -> str | None:
        return image_id(ref)

    # ------------------------------------------------------------ base image

    def base(self, bootstrap: bool = False) -> str:
        """The project base image, built when missing; its parent bootstrapped offline (debootstrap) when asked and
        no parent is local or pullable."""
        if bootstrap and not self.parent and not (self._image_id(DEFAULT_PARENT) or self._image_id(BOOTSTRAP_PARENT)):
            try:
                self.client.images.pull(DEFAULT_PARENT)
            except docker.errors.DockerException:
                ui.say(f"{DEFAULT_PARENT} cannot be pulled: bootstrapping a parent offline")
                self.bootstrap_parent()
        return self.base_image()[0]

    def base_image(self, build: bool = True) -> tuple[str, str]:
        """(reference, id) of the project base image, built from Dockerfile.base when missing."""
        if self._base:
            return self._base
        parent, parent_id = self._parent()
        dockerfile = BASE_DOCKERFILE.read_bytes()
        ca = CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else b""
        digest = hashlib.sha256(dockerfile + b"\0" + parent_id.encode() + b"\0" + ca).hexdigest()[:16]
        ref = f"itwin-run/base:{digest}"
        image_id = self._image_id(ref)
        if image_id is None:
            if not build:
                return ref, ""
            with tempfile.TemporaryDirectory(prefix="itwin-base-") as ctx:
                Path(ctx, "Dockerfile").write_bytes(dockerfile)
                Path(ctx, "ca-certificates.crt").write_bytes(ca)
                self._build(ctx, "Dockerfile", ref, {"PARENT": parent}, step="base")
            image_id = self._image_id(ref) or ""
            self.client.api.tag(ref, "itwin-run/base", "latest")
        self._base = (ref, image_id)
        return self._base

    def _parent(self) -> tuple[str, str]:
        candidates = [self.parent] if self.parent else [DEFAULT_PARENT, BOOTSTRAP_PARENT]
        for ref in candidates:
            image_id = self._image_id(ref)
            if image_id:
                return ref, image_id
        first = candidates[0]
        try:
            ui.say(f"pulling {first}…", "dim")
            image = self.client.images.pull(first)
            return first, image.id
        except docker.errors.APIError as exc:
            hint = ("run `make` (it bootstraps a parent offline) or `itwin-run base --bootstrap`"
                    if not self.parent else "check the name, or pull/load it first")
            raise UserError(f"no parent image for the base: {first} is not local and cannot be pulled "
                            f"({exc.explanation or exc}); {hint}") from None

    def bootstrap_parent(self) -> str:
        """Make the offline parent (debootstrap + docker import), for hosts with no registry."""
        script = TEMPLATES / "bootstrap-parent.sh"
        with ui.console().status(f"bootstrapping {BOOTSTRAP_PARENT} from the Debian mirror (about a minute)…"):
            proc = subprocess.run(["bash", str(script), BOOTSTRAP_PARENT], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"bootstrap of {BOOTSTRAP_PARENT} failed: {last}")
        return BOOTSTRAP_PARENT

    # ------------------------------------------------------------ step images

    def resolve(self, spec: ImageSpec, opts: BuildOptions, *, build: bool = True) -> tuple[str, bool]:
        if spec.kind == "image":
            assert spec.image
            present = self._image_id(spec.image) is not None
            if opts.pull == "never" and not present:
                raise UserError(f"step {spec.step!r}: image {spec.image} is not present locally and --pull never "
                                "forbids pulling it (pull or load it first)")
            if not build or (present and opts.pull != "always"):
                return spec.image, present
            self.pull(spec.image, spec.step)
            return spec.image, True
        base_ref, base_id = self.base_image(build=build)
        if not base_id:
            return f"{spec.name}:<after base build>", False
        ref = spec.tag(base_id, opts)
        if self._image_id(ref):
            if spec.sources and build:  # its dependency image keeps its name (push and Apptainer take it by it)
                self.resolve(spec.dependencies(), opts)
            return ref, True
        if not build:
            return ref, False
        content = ref.rpartition(":")[2]  # what the image is made of, whatever env file it came from
        if twin := self._same_content(content):
            # another env file with the same packages (another project's, say): one image, one more name
            self.client.api.tag(twin, *ref.rsplit(":", 1))
            ui.say(f"{ref} for step {spec.step}: the image made for the same content, not rebuilt", "dim")
            return ref, True
        labels = {f"{LABEL}.kind": spec.kind, f"{LABEL}.content": content}
        with tempfile.TemporaryDirectory(prefix="itwin-ctx-") as ctx:
            if spec.sources:  # on the dependency image, tagged on its own: a source edit rebuilds only the top
                deps_ref, _ = self.resolve(spec.dependencies(), opts)
                dockerfile = spec.sources_context(Path(ctx), deps_ref)
                labels[f"{LABEL}.dependencies"] = deps_ref
            else:
                dockerfile = spec.context(Path(ctx), base_ref, opts)
            # a user Dockerfile may name the base image (ARG BASE / ITWIN_BASE); the templates have it written in
            args = {"ITWIN_BASE": base_ref, "BASE": base_ref} if spec.kind == "dockerfile" else {}
            self._build(ctx, dockerfile, ref, args, step=spec.step, labels=labels, env_file=spec.env_file)
        return ref, True

    def _same_content(self, content: str) -> str | None:
        """The id of an image itwin-run built from the same content (env file packages, sources, base, template,
        options) under another name."""
        try:
            found = self.client.api.images(filters={"label": [f"{LABEL}.managed=1", f"{LABEL}.content={content}"]},
                                           quiet=True)
        except docker.errors.APIError:
            return None
        return found[0] if found else None

    def source_wheels(self, ref: str, dest: Path) -> list[Path]:
        """The wheels of the sources that step image `ref` was built with (kept in it at SOURCE_WHEELS), copied
        into dest; the container used to copy them is removed."""
        import io
        import tarfile

        cid = self.client.api.create_container(ref, command=["true"], labels={f"{LABEL}.managed": "1"})["Id"]
        try:
            stream, _ = self.client.api.get_archive(cid, SOURCE_WHEELS)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                tar.extractall(dest, filter="data")
        except docker.errors.DockerException as exc:
            raise UserError(f"{ref}: no source wheels in it ({exc})") from None
        finally:
            self.client.api.remove_container(cid, force=True)
        return sorted((dest / Path(SOURCE_WHEELS).name).glob("*.whl"))

    def _transfer(self, verb: str, ref: str, call: Callable[..., Iterator[dict[str, Any]]], what: str) -> str:
        """Stream a pull or push with layer progress; raises UserError naming the registry problem; returns the
        digest the daemon reported (pushes)."""
        repo, tag = _split_ref(ref)
        layers: dict[str, str] = {}
        digest = ""
        try:
            with ui.console().status(f"{verb} {ref}") as status:
                for item in call(repo, tag=tag, stream=True, decode=True, auth_config=_auth()):
                    if "error" in item:
                        raise docker.errors.APIError(item["error"])
                    if item.get("id") and item.get("status"):
                        layers[item["id"]] = item["status"]
                        done = sum(1 for v in layers.values() if v in ("Pull complete", "Already exists", "Pushed",
                                                                      "Layer already exists"))
                        status.update(f"{verb} {ref}: {done}/{len(layers)} layers")
                    digest = (item.get("aux") or {}).get("Digest", digest)
        except docker.errors.APIError as exc:
            raise UserError(f"{what}: {_registry_problem(str(exc.explanation or exc))}") from None
        except docker.errors.DockerException as exc:
            raise _daemon_error(exc) from None
        return digest

    def pull(self, ref: str, step: str) -> None:
        """Credentials: ITWIN_RUN_REGISTRY_USER/PASSWORD, else the Docker config (`docker login`), as the CLI does."""
        self._transfer("pulling", ref, self.client.api.pull, f"step {step!r}: cannot pull {ref}")
        ui.say(f" {ref}", "green", prefix="pulled")

    def identity(self, ref: str) -> str | None:
        return image_id(ref)

    def oci_ref(self, ref: str) -> str:
        return ref

    def push(self, ref: str, registry: str) -> Pin:
        """Push `ref`; for an image with sources also its dependency image and an image of its sources' wheels
        (made for the push, then removed here)."""
        image = self._push(ref, registry)
        deps = ((self.client.api.inspect_image(ref).get("Config") or {}).get("Labels") or {}).get(
            f"{LABEL}.dependencies")
        if not deps:
            return Pin(image)
        import io
        import tarfile

        with tempfile.TemporaryDirectory(prefix="itwin-wheels-") as tmp:
            data = io.BytesIO()
            with tarfile.open(fileobj=data, mode="w") as tar:
                for wheel in self.source_wheels(ref, Path(tmp)):
                    tar.add(wheel, arcname=f"{Path(SOURCE_WHEELS).name}/{wheel.name}")
        repo, tag = _split_ref(ref)
        wheels = f"{repo}:{tag}-wheels"
        self.client.api.import_image_from_data(data.getvalue(), repository=repo, tag=f"{tag}-wheels",
                                               changes=[f"LABEL {LABEL}.managed=1"])
        made = self.client.api.inspect_image(wheels)["Id"]
        try:
            return Pin(image, self._push(deps, registry), self._push(wheels, registry))
        finally:
            self.client.api.remove_image(made, force=True)  # and its registry tag

    def _push(self, ref: str, registry: str) -> str:
        """Tag `ref` as REGISTRY/NAME:TAG and push it; returns that reference with its digest."""
        target = f"{registry.rstrip('/')}/{ref.removeprefix('itwin-run/')}"
        repo, tag = _split_ref(target)
        try:
            self.client.api.tag(ref, repo, tag)
        except docker.errors.ImageNotFound:
            raise UserError(f"cannot push {ref}: no such image here (removed since the build?): build again") from None
        digest = self._transfer("pushing", target, self.client.api.push, f"cannot push {target}")
        if not digest:
            raise UserError(f"push of {target} reported no digest")
        ui.say(f" {target}@{digest}", "green", prefix="pushed")
        return f"{target}@{digest}"

    def save(self, refs: list[str], dest: Path) -> list[Path]:
        """`docker save` each image (and the base image and its parent, so that content tags match on the other
        side) into dest, for sites with no registry."""
        base_ref, _ = self.base_image()
        parent, _ = self._parent()
        out = []
        for ref in dict.fromkeys([parent, base_ref, *refs]):
            path = dest / f"{_archive_name(ref)}.tar"
            partial = path.with_name(f".{path.name}.partial")
            image = self.client.images.get(ref)
            with ui.console().status(f"saving {ref} to {path}"), open(partial, "wb") as f:
                # by this name: an image made for the same content has others (and the first would be saved)
                for chunk in image.save(named=ref if ref in image.tags else True):
                    f.write(chunk)
            partial.replace(path)
            ui.say(f" {ref} -> {path} ({path.stat().st_size / 1e6:.0f} MB)", "green", prefix="saved")
            out.append(path)
        return out

    def load(self, src: Path) -> list[str]:
        loaded = []
        for path in sorted(src.glob("*.tar")):
            with ui.console().status(f"loading {path.name}"), open(path, "rb") as f:
                try:
                    images = self.client.images.load(f)
                except docker.errors.APIError as exc:
                    raise UserError(f"{path}: docker could not load it: {exc.explanation or exc}") from None
            for image in images:
                loaded += image.tags
                ui.say(f" {', '.join(image.tags)}", "green", prefix="loaded")
        return loaded

    def _build(self, ctx: str, dockerfile: str, ref: str, buildargs: dict[str, str], step: str,
               labels: dict[str, str] | None = None, env_file: Path | None = None) -> None:
        """Build, showing progress: on a terminal a status line (elapsed time, the build step or pip's latest
        line); elsewhere (CI, `| tee`) a start line and a heartbeat every 20 s with pip's latest line."""
        from rich.markup import escape

        lines: list[str] = []
        start = time.monotonic()
        error: str | None = None
        labels = {f"{LABEL}.managed": "1", f"{LABEL}.step": step, **(labels or {})}
        terminal = ui.console().is_terminal
        beat = start
        where = _BuildPhase()
        layers: list[str] = []  # the image id after each instruction
        stage_ends: list[str] = []  # the last one of each stage but the final one
        if not terminal:
            ui.say(f"building {ref} for step {step} (pip's progress every 20 s)")
        try:
            stream: Iterator[dict[str, Any]] = self.client.api.build(
                path=ctx, dockerfile=dockerfile, tag=ref, buildargs=buildargs, labels=labels,
                rm=True, forcerm=True, decode=True, pull=False)
            with ui.console().status(f"building {ref} (step {step})") as status:
                for item in stream:
                    if "error" in item:
                        error = ui.strip_escapes(item["error"]).strip()
                        lines.append(error)
                        break
                    for line in ui.strip_escapes(item.get("stream", "")).splitlines():
                        if not line.strip():
                            continue
                        lines.append(line)
                        if line.startswith("Step ") and " : FROM " in line.upper() and layers:
                            stage_ends.append(layers[-1])
                        elif m := re.fullmatch(r" ---> ([0-9a-f]{12,64})", line.rstrip()):
                            layers.append(m.group(1))
                        if self.verbose:
                            ui.console().print(f"[dim]build {step} |[/dim] {escape(line)}", highlight=False)
                        where.see(line)
                        elapsed = time.monotonic() - start
                        if terminal:
                            width = max(20, ui.console().width - 8)
                            status.update(f"building {step} ({where}, {elapsed:.0f}s): {line.strip()}"[:width])
                        elif time.monotonic() - beat >= 20:
                            beat = time.monotonic()
                            ui.say(f"building {step} ({where}, {elapsed:.0f}s): {line.strip()[:160]}")
        except docker.errors.APIError as exc:
            error = str(exc.explanation or exc)
        except docker.errors.DockerException as exc:
            raise _daemon_error(exc) from None
        finally:
            self._drop_untagged(stage_ends + layers[-1:])
        if error is not None:
            raise UserError(_build_error(ref, step, error, lines, env_file))
        ui.say(f" {ref} for {step} in {time.monotonic() - start:.1f}s", "green", prefix="built")

    def _drop_untagged(self, ids: list[str]) -> None:
        """Remove what a build left untagged: its build stages, and on failure the layers it got to (the classic
        builder keeps them as cache; nothing of them is reused once the image is tagged, and they would pile up).
        An image that is tagged, or that another image or a container still uses, stays."""
        for image in dict.fromkeys(ids):
            try:
                if not self.client.api.inspect_image(image).get("RepoTags"):
                    self.client.api.remove_image(image, noprune=False)
            except docker.errors.DockerException:
                continue


class DockerRunner:
    """Runs steps as containers: the caller's uid (an unprivileged one when root), no capabilities, the project
    read-only, inputs read-only, the output read-write, all at their host paths; the run's steps share one network
    namespace (see _Pod)."""

    name = "docker"
    cwltool_args: list[str] = []
    cwl_output_at_dataset = True  # DockerRequirement.dockerOutputDirectory

    def __init__(self) -> None:
        self._pod: _Pod | None = None
        self._labels: dict[str, str] = {}
        self._pod_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _active and _cancelled: no container starts after interrupt()
        self._active: set[str] = set()
        self._removals: list[threading.Thread] = []  # of the containers of steps that ended
        self._cancelled = False
        self._forced = False
        self._cgroup_v: int | None = -1  # not asked yet
        self._watchdog = Watchdog()  # removes the run's containers should this process be killed outright
        self._watched = False

    def default_user(self, root: Path) -> str:
        """Your uid:gid; when you are root, the project directory's owner, or nobody (65534) for a root-owned
        project: a workflow file gets no root in its containers unless `--user 0:0` asks for it."""
        if os.getuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        st = root.stat()
        return f"{st.st_uid}:{st.st_gid}" if st.st_uid != 0 else UNPRIVILEGED

    # ------------------------------------------------------------ running

    def begin(self, labels: dict[str, str]) -> None:
        self._labels = labels

    def _watch(self) -> None:
        """Before the run's first container: its watchdog, to remove them all should this process die."""
        if self._labels and not self._watched:
            self._watched = True
            self._watchdog.containers(self._labels)

    def _network(self, image: str) -> str | None:
        """The run's network holder (see _Pod), started with the run's first step: a run whose steps are all up to
        date starts no container. It runs the base image (any step image will do where there is none)."""
        with self._pod_lock:
            if self._pod is None:
                self._watch()
                labels = {f"{LABEL}.managed": "1", f"{LABEL}.role": "network", **self._labels}
                pod_image = "itwin-run/base:latest" if image_id("itwin-run/base:latest") else image
                self._pod = _Pod(client().api, pod_image, labels)
        return self._pod.network_mode()

    def end(self) -> None:
        with self._lock:
            removals, self._removals = self._removals, []
        for removal in removals:
            removal.join()
        if self._pod is not None:
            self._pod.remove(wait=self._cancelled)
            self._pod = None
        self._watchdog.close()

    def clean(self, over: Callable[[str], bool]) -> None:
        api = client().api
        mine = self._labels.get(f"{LABEL}.run")
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
            env = client().api.inspect_image(job.image)["Config"].get("Env") or []
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
        api = client().api
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

    @staticmethod
    def _stop(cid: str, force: bool) -> None:
        try:
            if force:
                client().api.kill(cid)
            else:
                client().api.stop(cid, timeout=4)
        except GONE:
            pass  # gone already, or never started, or the daemon went away

    def _cgroups(self) -> int | None:
        """The cgroup version to measure steps with, where the daemon is on this machine (a unix socket); None: not
        measured. A daemon with the systemd cgroup driver refuses the parent (it takes slices): see run()."""
        if self._cgroup_v == -1:
            local = client().api.base_url.startswith("http+docker://localhost")
            self._cgroup_v = usage.version() if usage.enabled() and local else None
        return self._cgroup_v

    @staticmethod
    def _limits(job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if job.limits.cpus:
            out["nano_cpus"] = int(job.limits.cpus * 1e9)
        if job.limits.memory:
            out["mem_limit"] = out["memswap_limit"] = job.limits.memory_bytes  # and no swap beyond it
        return out

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        try:
            code = self._run(job, on_line)
        except (Cancelled, UserError):
            raise
        except Exception:  # the connection's end, whatever layer saw it: one line when the daemon went away
            if _answers():
                raise
            raise _lost(job.step) from None
        if code in (137, 143) and not self._cancelled and "killed" not in job.usage and _going_away():
            raise _lost(job.step)  # a daemon that shuts down stops its containers first
        return code

    def _run(self, job: Job, on_line: Callable[[str], None]) -> int:
        api = client().api
        self._watch()
        binds = {str(m.source): {"bind": str(m.target), "mode": "ro" if m.read_only else "rw"} for m in job.mounts}
        network = self._network(job.image) if self._labels else None
        v = self._cgroups()
        parent = usage.Parent(v) if v else None

        def create() -> str:
            host_config = api.create_host_config(
                binds=binds, shm_size=SHM_SIZE, device_requests=gpu_requests(job.gpus) or None, init=True,
                network_mode=network, cgroup_parent=parent.path if parent else None, **self._limits(job),
                **security_options())
            return api.create_container(
                job.image, command=job.argv, user=job.user, working_dir=str(job.workdir), environment=job.env,
                labels={f"{LABEL}.managed": "1", **job.labels}, host_config=host_config, detach=True)["Id"]

        def created() -> str:
            nonlocal parent
            with self._lock:  # no container is created after interrupt()
                if self._cancelled:
                    raise Cancelled(job.step)
                try:
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
                    raise UserError(f"step {job.step!r}: docker could not create the container: "
                                    f"{exc.explanation or exc}") from None
                self._active.add(cid)
                return cid

        cid = created()
        try:
            if network and self._pod is not None and not self._pod.running():
                with self._lock:  # the pod could not start: this step gets a network of its own
                    self._active.discard(cid)
                self._remove(cid, None)
                network = None
                cid = created()
            with self._lock:
                if self._cancelled:  # while the pod started
                    raise Cancelled(job.step)
            try:
                api.start(cid)
            except docker.errors.APIError as exc:
                msg = str(exc.explanation or exc)
                if job.gpus and ("device driver" in msg or "gpu" in msg.lower()):
                    raise UserError(f"step {job.step!r} asks for GPUs ({job.gpus}) but this Docker daemon has no "
                                    "NVIDIA runtime: install nvidia-container-toolkit and restart dockerd") from None
                raise UserError(f"step {job.step!r}: docker could not start the container: {msg}") from None
            started = time.monotonic()
            timer = time_limit(job, lambda: self._stop(cid, force=True))
            with self._lock:
                cancelled, forced = self._cancelled, self._forced
            if cancelled:  # interrupt() came between create and start: it could not stop what had not started
                self._stop(cid, forced)
            # Ask for the exit status while the output streams: the daemon answers as soon as the container exits.
            waiter = _Waiter(api, cid)
            pending = b""
            for chunk in api.logs(cid, stream=True, follow=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    on_line(raw.decode("utf-8", "replace"))
            if pending:
                on_line(pending.decode("utf-8", "replace"))
            code = waiter.result()
            job.usage["wall_s"] = round(time.monotonic() - started, 3)
            if timer:
                timer.cancel()
            if code and job.limits.memory and "killed" not in job.usage:
                try:
                    if api.inspect_container(cid)["State"].get("OOMKilled"):
                        job.usage["killed"] = f"out of memory (limit {job.limits.memory})"
                except docker.errors.APIError:
                    pass
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
    def _remove(cid: str, parent: usage.Parent | None) -> None:
        try:
            client().api.remove_container(cid, force=True)
        except GONE:
            pass  # removed already; or the daemon went away (the next run removes it)
        if parent:
            parent.remove()  # once the container (its child cgroup) is gone


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


def made() -> list[Made]:
    """The images itwin-run made (its label): by tag; an image pulled by digest only (a pin file's) by its digest;
    else untagged (what an interrupted build left)."""
    try:
        df = client().api.df()  # sizes without the layers an image shares with others, and container counts
    except docker.errors.DockerException as exc:
        raise _daemon_error(exc) from None
    out = []
    for img in df.get("Images") or []:
        if (img.get("Labels") or {}).get(f"{LABEL}.managed") != "1":
            continue
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        own = max(0, int(img.get("Size") or 0) - max(0, int(img.get("SharedSize") or 0)))
        names = tags or [d for d in img.get("RepoDigests") or [] if "@sha256:" in d and not d.startswith("<none>")]
        needs = (img.get("Labels") or {}).get(f"{LABEL}.dependencies")
        for i, ref in enumerate(names or [f"<none>@{img['Id'][7:19]}"]):
            out.append(Made("docker", ref, own if i == 0 else 0, float(img.get("Created") or 0),
                            key=ref if names else img["Id"], stage=not names,
                            busy=int(img.get("Containers") or 0) > 0, needs=needs))
    return out


def remove(item: Made) -> None:
    try:
        client().api.remove_image(item.key, noprune=False)
    except docker.errors.APIError as exc:
        raise UserError(f"docker: cannot remove {item.ref}: {exc.explanation or exc}") from None


ENGINE = Engine(name="docker", builder=DockerBuilder, runner=DockerRunner, made=made, remove=remove, doctor=doctor)
