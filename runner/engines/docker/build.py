"""DockerBuilder: the base image, step images (dependency and source layers), pull, push, save and load."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runner import ui
from runner.engines.base import one_at_a_time
from runner.engines.docker.buildlog import BuildProgress, build_error
from runner.engines.docker.client import BOOTSTRAP_PARENT, DEFAULT_PARENT, client, daemon_error, image_id
from runner.errors import UserError
from runner.images import BASE_DOCKERFILE, CA_BUNDLE, LABEL, SOURCE_WHEELS, TEMPLATES, WHEELS_ARG, BuildOptions, ImageSpec, Pin
from runner.places import build_lock

# The classic builder's words when a cached layer it builds on is removed under it (moby/moby#36901)
LOST_PARENT = "unknown parent image ID"


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
    return (name, tag) if name and "/" not in tag else (ref, "latest")


def _registry_problem(msg: str) -> str:
    low = msg.lower()
    if any(w in low for w in ("unauthorized", "authentication required", "denied", "no basic auth credentials")):
        return f"the registry asks for credentials: `docker login` to it (or set them in the Docker config) [{msg}]"
    if "connection refused" in low or "no such host" in low or "i/o timeout" in low or "dial tcp" in low:
        return f"the registry is unreachable [{msg}]"
    if "not found" in low or "manifest unknown" in low or "does not exist" in low:
        return f"no such image in the registry [{msg}]"
    return msg


class DockerBuilder:
    name = "docker"

    def __init__(self, parent: str | None = None, verbose: bool = False):
        self.parent = parent or os.environ.get("ITWIN_RUN_BASE_PARENT") or None
        self.verbose = verbose
        self._base: tuple[str, str] | None = None

    def daemon(self) -> str | None:
        """The daemon's address: None for DOCKER_HOST's (an engine on a Docker-compatible service overrides it)."""
        return None

    @property
    def client(self) -> docker.DockerClient:
        return client(self.daemon())

    # ------------------------------------------------------------ base image

    def base(self, bootstrap: bool = False) -> str:
        """The project base image, built when missing; its parent bootstrapped offline (debootstrap) when asked and
        no parent is local or pullable."""
        if bootstrap and not self.parent and not (self.identity(DEFAULT_PARENT) or self.identity(BOOTSTRAP_PARENT)):
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
        image_id = self.identity(ref)
        if image_id is None:
            if not build:
                return ref, ""
            with tempfile.TemporaryDirectory(prefix="itwin-base-") as ctx:
                Path(ctx, "Dockerfile").write_bytes(dockerfile)
                Path(ctx, "ca-certificates.crt").write_bytes(ca)
                self._build(ctx, "Dockerfile", ref, {"PARENT": parent}, step="base")
            image_id = self.identity(ref) or ""
            self.client.api.tag(ref, "itwin-run/base", "latest")
        self._base = (ref, image_id)
        return self._base

    def _parent(self) -> tuple[str, str]:
        candidates = [self.parent] if self.parent else [DEFAULT_PARENT, BOOTSTRAP_PARENT]
        for ref in candidates:
            image_id = self.identity(ref)
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
        with ui.status(f"bootstrapping {BOOTSTRAP_PARENT} from the Debian mirror (about a minute)…"):
            proc = subprocess.run(["bash", str(script), BOOTSTRAP_PARENT], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"bootstrap of {BOOTSTRAP_PARENT} failed: {last}")
        return BOOTSTRAP_PARENT

    # ------------------------------------------------------------ step images

    def resolve(self, spec: ImageSpec, opts: BuildOptions, *, build: bool = True) -> tuple[str, bool]:
        if spec.kind == "image":
            assert spec.image
            present = self.identity(spec.image) is not None
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
        if self.identity(ref):
            if spec.sources and build:  # its dependency image keeps its name (push and Apptainer take it by it)
                self.resolve(spec.dependencies(), opts)
            return ref, True
        if not build:
            return ref, False
        content = ref.rpartition(":")[2]  # what the image is made of, whatever env file (and project) it came from
        with contextlib.ExitStack() as held:  # one build of the same content at a time: the others wait, then use it
            try:
                held.enter_context(one_at_a_time(
                    build_lock(self.daemon() or os.environ.get("DOCKER_HOST", ""), content), ref))
            except OSError:
                pass  # no lock file here (a read-only home): build without one
            if not self.identity(ref):  # else built meanwhile, by the process that held the lock
                self._make(spec, opts, ref, base_ref, content)
        return ref, True

    def _make(self, spec: ImageSpec, opts: BuildOptions, ref: str, base_ref: str, content: str) -> None:
        if twin := self._same_content(content):
            # another env file with the same packages (another project's, say): one image, one more name
            self.client.api.tag(twin, *ref.rsplit(":", 1))
            ui.say(f"{ref} for step {spec.step}: the image made for the same content, not rebuilt", "dim")
            return
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
            with contextlib.ExitStack() as serving:
                if opts.wheelhouse and spec.kind != "dockerfile" and not spec.sources:  # Dockerfile.pip's
                    from runner.engines.docker.wheels import served  # http.server: not on a run's path
                    args[WHEELS_ARG] = serving.enter_context(served(opts.wheelhouse, self.client.api))
                self._build(ctx, dockerfile, ref, args, step=spec.step, labels=labels, env_file=spec.env_file)

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
            with ui.status(f"{verb} {ref}") as status:
                for item in call(repo, tag=tag, stream=True, decode=True, auth_config=_auth()):
                    if "error" in item:
                        raise docker.errors.APIError(item["error"])
                    if item.get("id") and item.get("status"):
                        layers[item["id"]] = item["status"]
                        done = sum(1 for v in layers.values() if v in ("Pull complete", "Already exists", "Pushed",
                                                                      "Layer already exists"))
                        status.update(f"{verb} {ref}: {done}/{len(layers)} layers")
                    digest = (item.get("aux") or {}).get("Digest", digest)
                    if m := re.search(r"digest: (sha256:[0-9a-f]{64})", str(item.get("status", ""))):
                        digest = digest or m.group(1)  # Podman says it only in words
        except docker.errors.APIError as exc:
            raise UserError(f"{what}: {_registry_problem(str(exc.explanation or exc))}") from None
        except docker.errors.DockerException as exc:
            raise daemon_error(exc) from None
        return digest

    def pull(self, ref: str, step: str) -> None:
        """Credentials: ITWIN_RUN_REGISTRY_USER/PASSWORD, else the Docker config (`docker login`), as the CLI does."""
        self._transfer("pulling", ref, self.client.api.pull, f"step {step!r}: cannot pull {ref}")
        ui.say(f" {ref}", "green", prefix="pulled")

    def identity(self, ref: str) -> str | None:
        """The local image's id; None when there is no such image."""
        return image_id(ref, self.daemon())

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
            try:
                image = self.client.images.get(ref)
            except docker.errors.ImageNotFound:
                raise UserError(f"{ref}: no longer in {self.name} (removed since it was made): build again") from None
            with ui.status(f"saving {ref} to {path}"), open(partial, "wb") as f:
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
            with ui.status(f"loading {path.name}"), open(path, "rb") as f:
                try:
                    images = self.client.images.load(f)
                except docker.errors.APIError as exc:
                    raise UserError(f"{path}: {self.name} could not load it: {exc.explanation or exc}") from None
            for image in images:
                loaded += image.tags
                ui.say(f" {', '.join(image.tags)}", "green", prefix="loaded")
        return loaded

    def _build(self, ctx: str, dockerfile: str, ref: str, buildargs: dict[str, str], step: str,
               labels: dict[str, str] | None = None, env_file: Path | None = None) -> None:
        """Build, showing its progress (BuildProgress). Once more when a cached layer it built on was removed
        meanwhile (a `docker image prune`, another build's clean-up): the classic builder then fails with
        "unknown parent image ID", and a second try makes that layer again."""
        start = time.monotonic()
        labels = {f"{LABEL}.managed": "1", f"{LABEL}.step": step, **(labels or {})}
        for attempt in (1, 2):
            error, lines = self._build_once(ctx, dockerfile, ref, buildargs, step, labels)
            if error is None or attempt == 2 or LOST_PARENT not in error:
                break
            ui.say(f" {ref} for {step}: a cached layer was removed during the build; building again", "yellow",
                   prefix="retry")
        if error is not None:
            raise UserError(build_error(ref, step, error, lines, env_file))
        ui.say(f" {ref} for {step} in {time.monotonic() - start:.1f}s", "green", prefix="built")

    def _build_once(self, ctx: str, dockerfile: str, ref: str, buildargs: dict[str, str], step: str,
                    labels: dict[str, str]) -> tuple[str | None, list[str]]:
        """(the error or None, the build's output lines)."""
        from rich.markup import escape

        lines: list[str] = []
        error: str | None = None
        layers: list[str] = []  # the image id after each instruction
        stage_ends: list[str] = []  # the last one of each stage but the final one
        try:
            stream: Iterator[dict[str, Any]] = self.client.api.build(
                path=ctx, dockerfile=dockerfile, tag=ref, buildargs=buildargs, labels=labels, rm=True, forcerm=True,
                decode=True, pull=False, network_mode="host" if WHEELS_ARG in buildargs else None)
            with ui.status(f"building {ref} (step {step})") as status, BuildProgress(
                    ref, step, status, ui.console().is_terminal, lambda: ui.console().width) as progress:
                for item in stream:
                    if "error" in item:
                        error = ui.strip_escapes(item["error"]).strip()
                        lines.append(error)
                        break
                    for line in ui.strip_escapes(item.get("stream", "")).splitlines():
                        if not line.strip():
                            continue
                        lines.append(line)
                        # Docker's "Step 2/5 : FROM x" and " ---> ID"; Podman's "STEP 2/5: FROM x" and "--> ID"
                        if re.match(r"(?i)step \d+/\d+ ?: from ", line) and layers:
                            stage_ends.append(layers[-1])
                        elif m := re.fullmatch(r" ?-{2,3}> ([0-9a-f]{12,64})", line.rstrip()):
                            layers.append(m.group(1))
                        if self.verbose:
                            ui.console().print(f"[dim]build {step} |[/dim] {escape(line)}", highlight=False)
                        progress.see(line)
        except docker.errors.APIError as exc:
            error = str(exc.explanation or exc)
        except docker.errors.DockerException as exc:
            raise daemon_error(exc) from None
        finally:
            self._drop_untagged(stage_ends + layers[-1:])
        return error, lines

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
