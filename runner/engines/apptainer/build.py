"""ApptainerBuilder: SIFs (and source overlays) from step images, registries, pin files and archives."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runner import ui
from runner.engines.apptainer.artifact import pull_file, push_file
from runner.engines.apptainer.export import converts_here, make_sif
from runner.engines.apptainer.tool import (
    REGISTRY_SCHEMES,
    executable,
    mksquashfs,
    one_maker,
    plain_http,
    safe_name,
    suffix,
    unpacked_in_memory,
)
from runner.engines.base import OVERLAY, image_parts
from runner.errors import UsageError, UserError
from runner.images import SOURCE_WHEELS, BuildOptions, ImageSpec, Pin
from runner.places import sif_cache


class ApptainerBuilder:
    name = "apptainer"

    def __init__(self, parent: str | None = None, verbose: bool = False):
        self.parent, self.verbose = parent, verbose
        self.exe = executable()
        self._docker = None
        self._origin: dict[str, str] = {}  # SIF (or DEPS.sif::SOURCES.sqfs) -> the Docker image it was made from
        self._pushed: dict[str, str] = {}  # a SIF or overlay -> its artifact, oras://NAME:TAG@DIGEST
        self._noted_flat = False

    # ------------------------------------------------------------ images

    def _docker_engine(self):
        """The Docker engine, when a daemon answers here (to build step images and convert them)."""
        if self._docker is None:
            from runner.engines.docker import DockerBuilder

            engine = DockerBuilder(parent=self.parent, verbose=self.verbose)
            try:
                engine.client  # noqa: B018 - connects
            except UserError:
                engine = False
            self._docker = engine
        return self._docker or None

    def resolve(self, spec: ImageSpec, opts: BuildOptions, *, build: bool = True) -> tuple[str, bool]:
        cache = sif_cache()
        if spec.kind == "image" and spec.image:
            ref = spec.image
            if ref.endswith(".sif") and Path(ref).is_file():
                return str(Path(ref).resolve()), True
            sif = cache / f"{safe_name(ref)}{suffix()}.sif"
            if opts.pull == "never" and not sif.is_file():
                raise UserError(f"step {spec.step!r}: no SIF of {ref} in {cache} and --pull never forbids pulling it")
            if opts.pull == "always" and build:
                sif.unlink(missing_ok=True)
            if spec.pin and spec.pin.sif and not (spec.pin.overlay and opts.single_file):
                return self._pinned_files(spec, opts, build)
            if spec.pin and spec.pin.dependencies and spec.pin.wheels and mksquashfs() and not opts.single_file:
                return self._pinned_layers(spec, opts, build)
            if ref.startswith(REGISTRY_SCHEMES):
                return self._convert(ref, sif, spec.step, build)
            docker = self._docker_engine()
            if docker and docker.identity(ref):
                self._origin[str(sif)] = ref
                return self._convert(f"docker-daemon://{ref}", sif, spec.step, build)
            return self._convert(f"docker://{ref}", sif, spec.step, build)
        digest = spec.spec_digest(opts)
        docker = self._docker_engine()
        if docker is None:
            # No daemon (an HPC node): the newest SIF (or source overlay on its dependency SIF) made for this spec.
            found = sorted([*cache.glob(f"{digest}-*.sif"), *cache.glob(f"{digest}-*.sqfs")],
                           key=lambda p: p.stat().st_mtime)
            if found and found[-1].suffix == ".sqfs":
                deps, _ = self.resolve(spec.dependencies(), opts, build=build)
                return f"{deps}{OVERLAY}{found[-1]}", True
            if found:
                return str(found[-1]), True
            raise UserError(f"step {spec.step!r}: no SIF for its image in {cache} (none named {digest}-*: its env "
                            f"file, sources and build options, --wheelhouse {opts.wheelhouse or 'none'} included) and "
                            "no Docker daemon here to build one: run `itwin-run build --engine apptainer` where Docker "
                            "is available, with the same options, and share or copy the cache")
        layered = bool(spec.sources) and not opts.single_file and mksquashfs() is not None
        if spec.sources and not opts.single_file and not layered and not self._noted_flat:
            self._noted_flat = True
            ui.say("note: no mksquashfs here (squashfs-tools): step images with sources are converted whole, "
                   "not as a dependency SIF and a source overlay", "yellow")
        deps = self.resolve(spec.dependencies(), opts, build=build) if layered else None
        ref, present = docker.resolve(spec, opts, build=build)
        tag = ref.rsplit(":", 1)[1]
        if deps is not None:
            overlay = cache / f"{digest}-{tag}{suffix()}.sqfs"
            image = f"{deps[0]}{OVERLAY}{overlay}"
            self._origin[image] = ref
            if not (present and deps[1]):
                return image, deps[1] and overlay.is_file()
            if not overlay.is_file():
                if not build:
                    return image, False
                self._overlay(lambda d: docker.source_wheels(ref, d), spec.step, deps[0], overlay)
            return image, True
        sif = cache / f"{digest}-{tag}{suffix()}.sif"
        self._origin[str(sif)] = ref
        if not present:
            return str(sif), sif.is_file()
        return self._convert(f"docker-daemon://{ref}", sif, spec.step, build)

    def _pinned_files(self, spec: ImageSpec, opts: BuildOptions, build: bool) -> tuple[str, bool]:
        """A pinned image whose SIF (and source overlay) were pushed as artifacts: pulled into the SIF cache under
        their digests, once for every process that needs them; nothing converted."""
        assert spec.pin and spec.pin.sif
        refs = [spec.pin.sif, *([spec.pin.overlay] if spec.pin.overlay else [])]
        files = [sif_cache() / (safe_name(ref.rsplit("/", 1)[-1].replace("@sha256:", "_")) + (".sqfs" if i else ".sif"))
                 for i, ref in enumerate(refs)]  # NAME:TAG-sif_DIGEST.sif: by the digest it was checked against
        image = OVERLAY.join(map(str, files))
        if opts.pull == "always" and build:
            for f in files:
                f.unlink(missing_ok=True)
        missing = [(ref, f) for ref, f in zip(refs, files, strict=True) if not f.is_file()]
        if missing and (not build or opts.pull == "never"):
            if build:
                raise UserError(f"step {spec.step!r}: no {files[0].name} in {sif_cache()} and --pull never forbids "
                                f"pulling it ({missing[0][0]})")
            return image, False
        for ref, f in missing:
            with one_maker(f) as needed:
                if needed:
                    start = time.monotonic()
                    with ui.status(f"pulling {ref} (step {spec.step})"):
                        pull_file(ref, f)
                    size = f.stat().st_size
                    ui.say(f" {f} for {spec.step} in {time.monotonic() - start:.1f}s (" + (
                        f"{size / 1e6:.0f} MB)" if size >= 1e6 else f"{size / 1e3:.0f} kB)"), "green", prefix="pulled")
        return image, True

    def _pinned_layers(self, spec: ImageSpec, opts: BuildOptions, build: bool) -> tuple[str, bool]:
        """A pinned image with sources: its dependency image as a SIF (converted once, whatever the sources) and an
        overlay of its sources, made from the pushed wheels image (kilobytes to pull)."""
        assert spec.pin and spec.pin.dependencies and spec.pin.wheels
        deps, present = self.resolve(ImageSpec(kind="image", name=spec.pin.dependencies, step=spec.step,
                                               image=spec.pin.dependencies), opts, build=build)
        overlay = sif_cache() / f"{safe_name(spec.pin.wheels)}{suffix()}.sqfs"
        image = f"{deps}{OVERLAY}{overlay}"
        if opts.pull == "always" and build:
            overlay.unlink(missing_ok=True)
        if overlay.is_file() or not build or not present:
            return image, present and overlay.is_file()
        if opts.pull == "never":
            raise UserError(f"step {spec.step!r}: no source overlay of {spec.pin.wheels} in {sif_cache()} and "
                            "--pull never forbids pulling it")
        wheels = spec.pin.wheels if spec.pin.wheels.startswith(REGISTRY_SCHEMES) else f"docker://{spec.pin.wheels}"

        def fetch(dest: Path) -> list[Path]:
            self._build(["--sandbox"], dest / "wheels", wheels, f"pulling {wheels}",
                        f"step {spec.step!r}: pulling its sources' wheels {wheels}")
            return sorted((dest / "wheels" / Path(SOURCE_WHEELS).name).glob("*.whl"))

        with one_maker(overlay) as needed:
            if needed:
                self._overlay(fetch, spec.step, deps, overlay)
        return image, True

    def _overlay(self, fetch: Callable[[Path], list[Path]], step: str, deps_sif: str, overlay: Path) -> None:
        """The sources' squashfs: their wheels (fetch(DIR) puts them into DIR: those the step's Docker image was
        built with, so the very same files) installed by the dependency SIF's own pip under /opt/venv, nothing
        else in it."""
        start = time.monotonic()
        stage = Path(tempfile.mkdtemp(prefix=".overlay-", dir=overlay.parent))
        partial = overlay.with_name(f".{overlay.name}.{os.getpid()}.partial")
        try:
            with ui.status(f"making the source overlay of step {step}"):
                wheels = fetch(stage)
                root = stage / "root"
                proc = subprocess.run(
                    [self.exe, "--quiet", "exec", "--containall", "--no-home", "--bind", f"{stage}:{stage}",
                     deps_sif, "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
                     "--no-warn-script-location", "--prefix", f"{root}/opt/venv", *map(str, wheels)],
                    capture_output=True, text=True)
                if proc.returncode != 0:
                    raise UserError(f"step {step!r}: installing its sources into an overlay failed: "
                                    f"{(proc.stderr or proc.stdout).strip()[-300:]}")
                comp = os.environ.get("ITWIN_RUN_SIF_COMPRESSION") or "lz4"
                proc = subprocess.run([str(mksquashfs()), str(root), str(partial), "-noappend", "-all-root",
                                       "-comp", comp, "-quiet"], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise UserError(f"mksquashfs failed for step {step!r}: {proc.stderr.strip()[-300:]}")
            partial.replace(overlay)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            partial.unlink(missing_ok=True)
        ui.say(f" {overlay} for {step} in {time.monotonic() - start:.1f}s (on {Path(deps_sif).name})", "green",
               prefix="overlay")

    def _convert(self, source: str, sif: Path, step: str, build: bool) -> tuple[str, bool]:
        if sif.is_file():
            return str(sif), True
        if not build:
            return str(sif), False
        with one_maker(sif) as needed:
            if needed:
                self._convert_now(source, sif, step)
        return str(sif), True

    def _convert_now(self, source: str, sif: Path, step: str) -> None:
        partial = sif.with_name(f".{sif.name}.{os.getpid()}.partial")
        start = time.monotonic()
        # lz4 by default: SIFs build twice as fast and, since every exec reads the image anew, a Python step starts
        # ~100 ms sooner than from gzip (the files are ~35% larger). ITWIN_RUN_SIF_COMPRESSION=gzip for smaller SIFs.
        compression = os.environ.get("ITWIN_RUN_SIF_COMPRESSION") or "lz4"
        docker = self._docker_engine() if source.startswith("docker-daemon://") else None
        ref = source.removeprefix("docker-daemon://")
        info = docker.client.api.inspect_image(ref) if docker else None
        doing = f"converting {source} to {sif.name} (step {step})"
        try:
            with unpacked_in_memory(info["Size"] if info else None) as place:
                made = False
                if info and converts_here(info):
                    where = Path(place.get("APPTAINER_TMPDIR") or os.environ.get("APPTAINER_TMPDIR") or tempfile.gettempdir())
                    try:
                        with ui.status(doing):
                            make_sif(self.exe, docker.client, ref, info, partial, compression, where)
                        made = True
                    except UserError as exc:  # an image this way cannot take (tar refused a file): Apptainer's way
                        ui.say(f"note: {exc}\n  converting it with `apptainer build` instead", "yellow")
                if not made:
                    self._build(["--mksquashfs-args", f"-comp {compression}"], partial, source, doing,
                                f"conversion of {source} to SIF for step {step!r}", place)
            partial.replace(sif)
        finally:
            partial.unlink(missing_ok=True)
        ui.say(f" {sif} for {step} in {time.monotonic() - start:.1f}s", "green", prefix="converted")

    def _build(self, options: list[str], target: Path, source: str, doing: str, what: str,
               env: dict[str, str] | None = None) -> None:
        """`apptainer build OPTIONS TARGET SOURCE`, with the registry credentials ITWIN_RUN_REGISTRY_USER/PASSWORD
        and plain HTTP for a registry on loopback (as Docker assumes too); UserError with its last lines."""
        cmd = [self.exe, "build", "--force", *options]
        if source.startswith("docker://") and plain_http(source):
            cmd.append("--no-https")
        env = {**os.environ, **(env or {})}
        if os.environ.get("ITWIN_RUN_REGISTRY_USER") and os.environ.get("ITWIN_RUN_REGISTRY_PASSWORD"):
            env["APPTAINER_DOCKER_USERNAME"] = os.environ["ITWIN_RUN_REGISTRY_USER"]
            env["APPTAINER_DOCKER_PASSWORD"] = os.environ["ITWIN_RUN_REGISTRY_PASSWORD"]
        with ui.status(doing):
            proc = subprocess.run([*cmd, str(target), source], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-8:]
            raise UserError(f"{what} failed:\n" + "\n".join("  " + ln for ln in tail))

    def _need_docker(self, what: str):
        docker = self._docker_engine()
        if docker is None:
            raise UserError(f"{what} needs a Docker daemon here (the SIFs are made from Docker images)")
        return docker

    def base(self, bootstrap: bool = False) -> str:
        return self._need_docker("the base image").base(bootstrap)

    def identity(self, ref: str) -> str | None:
        return None  # a SIF's name carries its content hash already; hashing GBs per run would cost more than it says

    def oci_ref(self, ref: str) -> str:
        return self._origin.get(ref, ref)

    def push(self, ref: str, registry: str) -> Pin:
        """Push the OCI image the SIF was made from (with its dependency image and wheels: see DockerBuilder.push),
        then the SIF and the source overlay themselves, as artifacts named after the images they were made from
        (NAME:TAG-sif, NAME:TAG-sqfs): the pin file then serves Docker (docker://) and Apptainer, which pulls the
        files and converts nothing."""
        origin = self._origin.get(ref)
        if origin is None:
            raise UsageError(f"{ref}: not converted from a Docker image here, so there is nothing to push")
        pin = self._need_docker("--push").push(origin, registry)
        parts = [Path(p) for p in image_parts(ref)]
        sif = self._artifact(parts[0], pin.dependencies if len(parts) > 1 else pin.image, "sif")
        overlay = self._artifact(parts[1], pin.wheels, "sqfs") if len(parts) > 1 else None
        return dataclasses.replace(pin, sif=sif, overlay=overlay)

    def _artifact(self, path: Path, made_from: str | None, kind: str) -> str:
        """Push one file (once per process) as the artifact beside the image it was made from."""
        if str(path) not in self._pushed:
            assert made_from
            target = f"{made_from.split('@')[0]}-{kind}"
            start = time.monotonic()
            with ui.status(f"pushing {path.name} to oras://{target}"):
                self._pushed[str(path)] = push_file(path, target)
            ui.say(f" {self._pushed[str(path)]} in {time.monotonic() - start:.1f}s", "green", prefix="pushed")
        return self._pushed[str(path)]

    def save(self, refs: list[str], dest: Path) -> list[Path]:
        """The SIFs into dest/sif (a cluster's nodes load them into their SIF cache), and the Docker images they
        were made from, where a daemon holds them."""
        (dest / "sif").mkdir(parents=True, exist_ok=True)
        out = []
        origins = list(dict.fromkeys(self._origin[r] for r in refs if r in self._origin))
        if origins:
            docker = self._need_docker("saving images")
            held = [o for o in origins if docker.identity(o)]  # one whose SIF was cached may be gone: not remade
            for gone in (o for o in origins if o not in held):
                ui.say(f"note: {gone} is no longer in Docker: its SIF is saved, not the image")
            if held:
                out += docker.save(held, dest)
        for sif in dict.fromkeys(part for r in refs for part in image_parts(r)):
            target = dest / "sif" / Path(sif).name
            shutil.copyfile(sif, target)
            out.append(target)
        return out

    def load(self, src: Path) -> list[str]:
        """SIFs saved by `build --save --engine apptainer` go into the SIF cache, under the names resolve() seeks."""
        cache = sif_cache()
        cache.mkdir(parents=True, exist_ok=True)
        loaded = []
        for sif in sorted([*(src / "sif").glob("*.sif"), *(src / "sif").glob("*.sqfs")]):
            partial = cache / f".{sif.name}.partial"
            shutil.copyfile(sif, partial)
            partial.replace(cache / sif.name)
            loaded.append(str(cache / sif.name))
            ui.say(f" {cache / sif.name}", "green", prefix="loaded")
        if not loaded:
            raise UsageError(f"{src}: no SIFs in {src / 'sif'} (save them with `itwin-run build --save DIR --engine apptainer`)")
        return loaded
