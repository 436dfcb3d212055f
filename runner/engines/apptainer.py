"""Apptainer (or SingularityCE) engine for HPC nodes: ApptainerBuilder makes SIFs, ApptainerRunner runs steps as
`apptainer exec` of them, through spython.

Images come, in this order, from the local SIF cache, from converting the step's Docker image (built by the Docker
engine where a daemon answers), or from a registry (`docker://`, `oras://`) for prebuilt images.

A step image with `env.source` packages comes in two parts, as its Docker image has two layers: a SIF of the
dependencies (converted once, cached by its own hash) and a small squashfs of the sources installed on top, run as
`apptainer exec --overlay SOURCES.sqfs:ro DEPS.sif`. A source edit makes a new overlay in seconds and leaves the
dependency SIF as it is. The step's image is then written `DEPS.sif::SOURCES.sqfs` (records, save, SLURM jobs)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from runner import ui
from runner.engines.base import OVERLAY, Cancelled, Engine, Job, Made, allocated_gpus, image_parts, time_limit
from runner.engines.watchdog import Watchdog
from runner.errors import UserError
from runner.images import SOURCE_WHEELS, BuildOptions, ImageSpec, Pin
from runner.places import sif_cache

_REGISTRY_SCHEMES = ("docker://", "oras://", "library://", "shub://")


def _mksquashfs() -> str | None:
    return os.environ.get("ITWIN_RUN_MKSQUASHFS") or shutil.which("mksquashfs")


def _executable() -> str:
    """apptainer (or singularity) on PATH; spython calls `singularity`, so give it that name when missing."""
    exe = os.environ.get("ITWIN_RUN_APPTAINER") or shutil.which("apptainer") or shutil.which("singularity")
    if not exe:
        raise UserError("apptainer is not installed (or not on PATH): load it (`module load apptainer`) "
                        "or set ITWIN_RUN_APPTAINER to its path")
    if not shutil.which("singularity") or os.environ.get("ITWIN_RUN_APPTAINER"):
        shim = sif_cache().parent / "bin"
        link = shim / "singularity"
        try:
            shim.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink() or os.readlink(link) != exe:
                tmp = shim / f".singularity.{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(exe)
                tmp.replace(link)
        except OSError as exc:
            raise unwritable(sif_cache(), exc) from None
        os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    return exe


class ApptainerBuilder:
    name = "apptainer"

    def __init__(self, parent: str | None = None, verbose: bool = False):
        self.parent, self.verbose = parent, verbose
        self.exe = _executable()
        self._docker = None
        self._origin: dict[str, str] = {}  # SIF (or DEPS.sif::SOURCES.sqfs) -> the Docker image it was made from
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
            sif = cache / f"{_safe(ref)}{_suffix()}.sif"
            if opts.pull == "never" and not sif.is_file():
                raise UserError(f"step {spec.step!r}: no SIF of {ref} in {cache} and --pull never forbids pulling it")
            if opts.pull == "always" and build:
                sif.unlink(missing_ok=True)
            if spec.pin and spec.pin.dependencies and spec.pin.wheels and _mksquashfs() and not opts.single_file:
                return self._pinned_layers(spec, opts, build)
            if ref.startswith(_REGISTRY_SCHEMES):
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
        layered = bool(spec.sources) and not opts.single_file and _mksquashfs() is not None
        if spec.sources and not opts.single_file and not layered and not self._noted_flat:
            self._noted_flat = True
            ui.say("note: no mksquashfs here (squashfs-tools): step images with sources are converted whole, "
                   "not as a dependency SIF and a source overlay", "yellow")
        deps = self.resolve(spec.dependencies(), opts, build=build) if layered else None
        ref, present = docker.resolve(spec, opts, build=build)
        tag = ref.rsplit(":", 1)[1]
        if deps is not None:
            overlay = cache / f"{digest}-{tag}{_suffix()}.sqfs"
            image = f"{deps[0]}{OVERLAY}{overlay}"
            self._origin[image] = ref
            if not (present and deps[1]):
                return image, deps[1] and overlay.is_file()
            if not overlay.is_file():
                if not build:
                    return image, False
                self._overlay(lambda d: docker.source_wheels(ref, d), spec.step, deps[0], overlay)
            return image, True
        sif = cache / f"{digest}-{tag}{_suffix()}.sif"
        self._origin[str(sif)] = ref
        if not present:
            return str(sif), sif.is_file()
        return self._convert(f"docker-daemon://{ref}", sif, spec.step, build)

    def _pinned_layers(self, spec: ImageSpec, opts: BuildOptions, build: bool) -> tuple[str, bool]:
        """A pinned image with sources: its dependency image as a SIF (converted once, whatever the sources) and an
        overlay of its sources, made from the pushed wheels image (kilobytes to pull)."""
        assert spec.pin and spec.pin.dependencies and spec.pin.wheels
        deps, present = self.resolve(ImageSpec(kind="image", name=spec.pin.dependencies, step=spec.step,
                                               image=spec.pin.dependencies), opts, build=build)
        overlay = sif_cache() / f"{_safe(spec.pin.wheels)}{_suffix()}.sqfs"
        image = f"{deps}{OVERLAY}{overlay}"
        if opts.pull == "always" and build:
            overlay.unlink(missing_ok=True)
        if overlay.is_file() or not build or not present:
            return image, present and overlay.is_file()
        if opts.pull == "never":
            raise UserError(f"step {spec.step!r}: no source overlay of {spec.pin.wheels} in {sif_cache()} and "
                            "--pull never forbids pulling it")
        wheels = spec.pin.wheels if spec.pin.wheels.startswith(_REGISTRY_SCHEMES) else f"docker://{spec.pin.wheels}"

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
            with ui.console().status(f"making the source overlay of step {step}"):
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
                proc = subprocess.run([str(_mksquashfs()), str(root), str(partial), "-noappend", "-all-root",
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
        try:
            self._build(["--mksquashfs-args", f"-comp {compression}"], partial, source,
                        f"converting {source} to {sif.name} (step {step})",
                        f"conversion of {source} to SIF for step {step!r}")
            partial.replace(sif)
        finally:
            partial.unlink(missing_ok=True)
        ui.say(f" {sif} for {step} in {time.monotonic() - start:.1f}s", "green", prefix="converted")

    def _build(self, options: list[str], target: Path, source: str, doing: str, what: str) -> None:
        """`apptainer build OPTIONS TARGET SOURCE`, with the registry credentials ITWIN_RUN_REGISTRY_USER/PASSWORD
        and plain HTTP for a registry on loopback (as Docker assumes too); UserError with its last lines."""
        cmd = [self.exe, "build", "--force", *options]
        if source.startswith("docker://") and _plain_http(source):
            cmd.append("--no-https")
        env = dict(os.environ)
        if os.environ.get("ITWIN_RUN_REGISTRY_USER") and os.environ.get("ITWIN_RUN_REGISTRY_PASSWORD"):
            env["APPTAINER_DOCKER_USERNAME"] = os.environ["ITWIN_RUN_REGISTRY_USER"]
            env["APPTAINER_DOCKER_PASSWORD"] = os.environ["ITWIN_RUN_REGISTRY_PASSWORD"]
        with ui.console().status(doing):
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
        """Push the OCI image the SIF was made from (with its dependency image and wheels: see DockerBuilder.push):
        the pin file then serves Docker (docker://) and Apptainer (a dependency SIF and a source overlay)."""
        origin = self._origin.get(ref)
        if origin is None:
            raise UserError(f"{ref}: not converted from a Docker image here, so there is nothing to push")
        return self._need_docker("--push").push(origin, registry)

    def save(self, refs: list[str], dest: Path) -> list[Path]:
        """The SIFs into dest/sif (a cluster's nodes load them into their SIF cache), and the Docker images they
        were made from, where a daemon holds them."""
        (dest / "sif").mkdir(parents=True, exist_ok=True)
        out = []
        origins = [self._origin[r] for r in refs if r in self._origin]
        if origins:
            out += self._need_docker("saving images").save(origins, dest)
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
            raise UserError(f"{src}: no SIFs in {src / 'sif'} (save them with `itwin-run build --save DIR --engine apptainer`)")
        return loaded



class ApptainerRunner:
    """Steps as `apptainer exec` with --cleanenv --containall (and --no-privs as root): as the caller, the
    project read-only, inputs read-only, the output read-write, all at their host paths."""

    name = "apptainer"
    cwltool_args = ["--singularity"]  # cwltool's Singularity/Apptainer support; dockerImageId is the SIF path
    # cwltool binds a Singularity tool's output directory as its HOME, which a dockerOutputDirectory under a path
    # Apptainer shares from the host (/tmp, the project) does not reach: outputs stay at cwltool's own path.
    cwl_output_at_dataset = False

    def __init__(self) -> None:
        self.exe = _executable()
        self._lock = threading.Lock()
        self._cancelled = False
        self._noted = False
        self._watchdog = Watchdog()

    def default_user(self, root: Path) -> str:
        return f"{os.getuid()}:{os.getgid()}"  # apptainer runs as the caller; as root, without privileges

    def begin(self, labels: dict[str, str]) -> None:
        pass

    def explain(self, job: Job, code: int, tail: list[str]) -> str:
        missing = next((m.group(1) for ln in tail[-3:] if (m := re.search(r'"([^"]+)": executable file not found', ln))),
                       None)
        return f"command {missing!r} not found in the image of step {job.step!r} ($PATH of the SIF)" if missing else ""

    def interrupt(self, force: bool) -> None:
        """SIGTERM (SIGKILL when forced) to the apptainer processes this runner started (its children)."""
        with self._lock:
            self._cancelled = True
        me = os.getpid()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                try:
                    os.kill(int(stat.parent.name), signal.SIGKILL if force else signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def end(self) -> None:
        self._watchdog.close()

    def clean(self, over: Callable[[str], bool]) -> None:
        pass  # a killed runner's steps went with their process groups (the watchdog)

    def run(self, job: Job, on_line: Callable[[str], None]) -> int:
        me = f"{os.getuid()}:{os.getgid()}"
        if job.user != me:
            raise UserError(f"step {job.step!r}: apptainer runs steps as the calling user ({me}); "
                            f"--user {job.user} needs the Docker engine")
        options = ["--cleanenv", "--containall", "--pwd", str(job.workdir)]
        if os.getuid() == 0:
            options.append("--no-privs")
        for m in job.mounts:
            options += ["--bind", f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"]
        for key, value in job.env.items():
            options += ["--env", f"{key}={value}"]
        if job.gpus:
            options.append("--nv")
            for key, value in allocated_gpus(job.gpus, os.environ).items():
                if key not in job.env:  # --cleanenv would hide the allocation: the step saw every GPU of the node
                    options += ["--env", f"{key}={value}"]
        options += self._limits(job)
        with self._lock:
            if self._cancelled:
                raise Cancelled(job.step)
            # Our own process (not spython's stream): its pid is what the time limit stops and what wait4 measures.
            *overlays, image = reversed(image_parts(job.image))
            options += [f for o in overlays for f in ("--overlay", f"{o}:ro")]
            # a process group of its own, which the watchdog kills should this process die without stopping it
            proc = subprocess.Popen([self.exe, "--quiet", "exec", *options, image, *job.argv],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
            self._watchdog.group(proc.pid)
        started = time.monotonic()
        exited = threading.Event()
        timer = time_limit(job, lambda: self._stop(proc, exited))
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        exited.set()
        self._watchdog.release(proc.pid)
        if timer:
            timer.cancel()
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's way (137 for SIGKILL)
        peak = rusage.ru_maxrss * 1024  # the largest process of the step's tree
        job.usage.update(wall_s=round(time.monotonic() - started, 3), cpu_s=rusage.ru_utime + rusage.ru_stime,
                         peak_memory=peak)
        limit = job.limits.memory_bytes
        if code == 137 and limit and "killed" not in job.usage and peak >= 0.9 * limit:
            job.usage["killed"] = f"out of memory (limit {job.limits.memory})"
        return code

    def _limits(self, job: Job) -> list[str]:
        """--cpus / --memory: Apptainer enforces them through cgroups, as root or under cgroups v2 (systemd)."""
        if not (job.limits.cpus or job.limits.memory):
            return []
        if os.getuid() != 0 and not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
            if not self._noted:
                self._noted = True
                ui.say("note: apptainer enforces --cpus/--memory only as root or with cgroups v2: not applied "
                       "(the time limit is)", "yellow")
            return []
        return ([f"--cpus={job.limits.cpus}"] if job.limits.cpus else []) + (
            [f"--memory={job.limits.memory_bytes}"] if job.limits.memory else [])

    @staticmethod
    def _stop(proc: subprocess.Popen, exited: threading.Event) -> None:
        proc.terminate()
        if not exited.wait(3):  # apptainer passes SIGTERM on; a step that ignores it gets SIGKILL
            proc.kill()


def _suffix() -> str:
    comp = os.environ.get("ITWIN_RUN_SIF_COMPRESSION") or "lz4"
    return "" if comp == "lz4" else f".{_safe(comp)}"


def _safe(ref: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)


def unwritable(cache: Path, exc: OSError) -> UserError:
    return UserError(f"the SIF cache {cache} is not writable ({exc.strerror}): set ITWIN_RUN_SIF_CACHE to a directory "
                     "of yours")


@contextlib.contextmanager
def one_maker(target: Path) -> Iterator[bool]:
    """Many processes may need the same new SIF or overlay at once (runs started together, SLURM jobs, users of one
    shared cache): the first makes it while the others wait on a lock file beside it, then use what it made. Yields
    whether the target still has to be made. A maker that crashed leaves only its `.partial` file, never the
    target, and its lock goes with its process."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise unwritable(target.parent, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.say(f"waiting for another process that makes {target.name}", "dim")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield not target.is_file()
    finally:
        os.close(fd)


def _plain_http(ref: str) -> bool:
    host = ref.removeprefix("docker://").split("/", 1)[0]
    return host.startswith(("127.", "localhost"))


def doctor(needs_gpu: bool) -> list:
    """The Apptainer side of `itwin-run doctor`."""
    from runner.checks import Check, free_space

    area = "apptainer"
    if not (os.environ.get("ITWIN_RUN_APPTAINER") or shutil.which("apptainer") or shutil.which("singularity")):
        return [Check(area, False, "apptainer (or singularity) not on PATH",
                      "load it (`module load apptainer`) or set ITWIN_RUN_APPTAINER to its path")]
    try:
        exe = _executable()
    except UserError as exc:  # where it keeps the SIFs cannot be written
        detail, _, fix = str(exc).partition(": set ")
        return [Check(area, False, detail, "set " + fix)]
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    if proc.returncode != 0:
        return [Check(area, False, f"{exe} --version fails: {(proc.stderr or proc.stdout).strip()[:200]}",
                      "repair the installation")]
    checks = [Check(area, True, f"{proc.stdout.strip()} ({exe})")]
    if os.getuid() == 0:
        checks.append(Check(area, True, "you are root: exec works (steps run with --no-privs)"))
    else:
        try:
            userns = int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
        except (OSError, ValueError):
            userns = False
        starter = Path(exe).resolve().parent.parent / "libexec" / "apptainer" / "bin" / "starter-suid"
        setuid = starter.exists() and bool(starter.stat().st_mode & 0o4000)
        checks.append(Check(area, userns or setuid, "non-root exec through " + (
            "user namespaces" if userns else "the setuid starter" if setuid else "nothing"),
            "ask the site to enable user namespaces (or the setuid starter)"))
    nv = shutil.which("nvidia-smi") is not None
    checks.append(Check(area, nv if needs_gpu else None, "--nv: nvidia-smi found" if nv else "--nv: no NVIDIA driver here",
                        "run on a GPU node with the NVIDIA driver"))
    cache = sif_cache()
    near = next(p for p in (cache, *cache.parents) if p.exists())
    writable = os.access(near, os.W_OK | os.X_OK)
    checks.append(Check(area, writable, f"the SIF cache {cache} is " + ("writable" if writable else
                                                                          f"not writable ({near})"),
                        "set ITWIN_RUN_SIF_CACHE to a directory of yours"))
    checks.append(free_space(area, cache, "the SIF cache"))
    tmp = Path(os.environ.get("APPTAINER_TMPDIR") or tempfile.gettempdir())
    room = free_space(area, tmp, "converting images (APPTAINER_TMPDIR)")
    room.fix = "set APPTAINER_TMPDIR to a local disk with room for the largest image, unpacked"
    checks.append(room)
    return checks


def made() -> list[Made]:
    """The SIFs in itwin-run's cache (converted from step images)."""
    cache = sif_cache()
    busy = _open_sifs()
    return [Made("apptainer", str(p), p.stat().st_size, p.stat().st_mtime, key=str(p), busy=str(p) in busy)
            for p in sorted([*cache.glob("*.sif"), *cache.glob("*.sqfs")])] if cache.is_dir() else []


def _open_sifs() -> set[str]:
    """SIFs a running step has open: an apptainer process's file, or a loop device's backing file."""
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.add(backing.read_text().strip())
        except OSError:
            continue
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith((".sif", ".sqfs")):
            found.add(target)
    return found


def remove(item: Made) -> None:
    try:
        Path(item.key).unlink()
    except OSError as exc:
        raise UserError(f"cannot remove {item.ref}: {exc.strerror}") from None


ENGINE = Engine(name="apptainer", builder=ApptainerBuilder, runner=ApptainerRunner, made=made, remove=remove,
                doctor=doctor, aliases=("singularity",))
