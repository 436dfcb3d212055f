"""Image specs: what goes into a step's image, and the content hash it is tagged with.

Engine-neutral: an engine turns an ImageSpec into something it can run (a Docker image, a SIF).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from runner import tree
from runner.errors import UsageError, ValidationError
from runner.workflow import StepSpec, Workflow
from runner.yamlfile import compose, dotted, where

# Templates and scripts: the repository's images/ and Dockerfile.base, reached through runner/data (links in the
# checkout, files in the wheel), so the installed tool finds them too.
DATA = Path(str(resources.files("runner") / "data"))
TEMPLATES = DATA / "images"
SOURCE_WHEELS = "/opt/itwin-run/source-wheels"  # where a step image keeps its sources' wheels (Dockerfile.sources)
WHEELS_ARG = "ITWIN_WHEELS"  # the build argument that tells Dockerfile.pip where the builder serves the wheelhouse
BASE_DOCKERFILE = DATA / "Dockerfile.base"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_PYTHON = "3.11"
LABEL = "org.itwin-run"  # every image, container and volume the runner creates carries f"{LABEL}.managed"

# Conda names whose pip name differs; anything else is suggested as-is.
_PIP_NAMES = {"pytorch": "torch", "pytorch-lightning": "lightning", "pytorch-cpu": "torch", "py-opencv": "opencv-python",
              "pyyaml": "pyyaml", "tensorflow-gpu": "tensorflow", "matplotlib-base": "matplotlib"}


@dataclass(frozen=True)
class BuildOptions:
    wheelhouse: Path | None = None
    constraints: Path | None = None
    pull: str = "missing"  # prebuilt images: missing | always | never
    single_file: bool = False  # one file per step image (cwltool takes one SIF): no Apptainer source overlays

    @classmethod
    def from_env(cls, wheelhouse: str | None = None, constraints: str | None = None, pull: str = "missing") -> BuildOptions:
        """--wheelhouse, else ITWIN_RUN_WHEELHOUSE, else the host pip's own find-links directory ('none': no wheelhouse)."""
        wh = wheelhouse or os.environ.get("ITWIN_RUN_WHEELHOUSE") or host_find_links()
        if wh == "none":
            wh = None
        cs = constraints or os.environ.get("ITWIN_RUN_CONSTRAINTS") or None
        if pull not in ("missing", "always", "never"):
            raise UsageError(f"--pull: expected missing, always or never; got {pull!r}")
        opts = cls(Path(wh).resolve() if wh else None, Path(cs).resolve() if cs else None, pull)
        if opts.wheelhouse and not opts.wheelhouse.is_dir():
            raise UsageError(f"wheelhouse {opts.wheelhouse} is not a directory")
        if opts.constraints and not opts.constraints.is_file():
            raise UsageError(f"constraints file {opts.constraints} not found")
        return opts


@dataclass
class ImageSpec:
    """A step image: `kind` is requirements | conda | dockerfile | image."""

    kind: str
    name: str
    step: str
    env_file: Path | None = None
    requirements: str = ""  # pip lines (requirements / conda kinds)
    sources: tuple[Path, ...] = ()  # package directories and wheels, installed on top of the requirements
    local: tuple[Path, ...] = ()  # local paths the requirements name (./libs/pkg, a wheel): `./local/N` in the context
    source_parts: tuple[str, ...] = ()  # the sources' share of digest_parts
    image: str | None = None  # prebuilt reference (image kind)
    pin: Pin | None = None  # a pinned image's layers (image kind, from `--images FILE`)
    digest_parts: list[str] = field(default_factory=list)
    exclude: tuple[Path, ...] = ()  # never in the build context nor the hash: datasets, the state folder
    def dependencies(self) -> ImageSpec:
        """The same image without its sources: the dependency part (Apptainer keeps it as a SIF of its own)."""
        return dataclasses.replace(self, sources=(), source_parts=(),
                                   digest_parts=[p for p in self.digest_parts if p not in self.source_parts])

    def _template_parts(self, opts: BuildOptions) -> list[str]:
        parts = _options_digest(opts, self.kind)
        if not self.sources:
            return parts
        return [*parts, *((TEMPLATES / name).read_text() for name in ("Dockerfile.sources", "build-sources.py"))]

    def _digest(self, parts: list[str]) -> str:
        h = hashlib.sha256()
        recipe = "pip" if self.kind in ("requirements", "conda") else self.kind  # both render Dockerfile.pip
        for part in [recipe, *parts, *self.digest_parts]:
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:16]

    def spec_digest(self, opts: BuildOptions) -> str:
        """What the image is made of, without the base image, and its name: names a SIF where no daemon can tell the
        base (one SIF per image name, as pin files and `--save` name them)."""
        return self._digest([self.name, *self._template_parts(opts)])

    def tag(self, base_id: str, opts: BuildOptions) -> str:
        """Content tag: the env file's packages, source tree, base image id, template and build options. Not the env
        file's name nor its kind: a requirements file and a conda file with the same packages make the same image."""
        return f"{self.name}:{self._digest([base_id, *self._template_parts(opts)])}"

    def context(self, dest: Path, base_ref: str, opts: BuildOptions) -> str:
        """Lay out the build context in `dest` (of the dependency image, when the spec has sources: see
        sources_context); returns the Dockerfile's path relative to it."""
        if self.kind == "dockerfile":
            assert self.env_file
            _link_tree(self.env_file.parent, dest, self.exclude)
            return self.env_file.name
        (dest / "requirements.txt").write_text(self.requirements)
        pip_args, copies = [], ["COPY requirements.txt ./"]
        if opts.wheelhouse:  # served to the build by the builder: see Dockerfile.pip
            pip_args.append(f"--find-links ${WHEELS_ARG}")
            copies.insert(0, f"ARG {WHEELS_ARG}")
        if opts.constraints:
            shutil.copy(opts.constraints, dest / "constraints.txt")
            pip_args.append("-c constraints.txt")
            copies.append("COPY constraints.txt ./")
        for i, path in enumerate(self.local):
            if path.is_file():
                (dest / "local" / str(i)).mkdir(parents=True)
                _link(path, dest / "local" / str(i) / path.name)
            else:
                _link_tree(path, dest / "local" / str(i), self.exclude)
        if self.local:
            copies.append("COPY local ./local")
        template = string.Template((TEMPLATES / "Dockerfile.pip").read_text())
        (dest / "Dockerfile").write_text(template.substitute(
            base=base_ref, pip_args=" ".join(pip_args), copy_requirements="\n".join(copies)))
        return "Dockerfile"

    def sources_context(self, dest: Path, deps_ref: str) -> str:
        """Lay out the build context of the sources image (on `deps_ref`, the image of self.dependencies()) in
        `dest`; returns the Dockerfile's path relative to it."""
        targets = []
        for i, src in enumerate(self.sources):
            if src.is_file():  # a wheel keeps its name: pip reads the package and version from it
                (dest / "source" / str(i)).mkdir(parents=True)
                _link(src, dest / "source" / str(i) / src.name)
                targets.append(f"./source/{i}/{src.name}")
            else:
                _link_tree(src, dest / "source" / str(i), self.exclude)
                targets.append(f"./source/{i}")
        shutil.copy(TEMPLATES / "build-sources.py", dest / "build-sources.py")
        template = string.Template((TEMPLATES / "Dockerfile.sources").read_text())
        (dest / "Dockerfile").write_text(template.substitute(deps=deps_ref, targets=" ".join(targets),
                                                             wheels=SOURCE_WHEELS))
        return "Dockerfile"


def host_find_links() -> str | None:
    """The first local directory pip on this host is told to find wheels in (PIP_FIND_LINKS or a pip.conf),
    so a site's local wheels (a CPU torch build, say) go into images as they go into host installs."""
    import configparser

    values = [os.environ.get("PIP_FIND_LINKS", "")]
    home = Path.home()
    for conf in [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), home / ".pip/pip.conf",
                 home / ".config/pip/pip.conf", Path(os.environ.get("PIP_CONFIG_FILE", "/nonexistent"))]:
        parser = configparser.ConfigParser()
        try:
            parser.read(conf)
        except (configparser.Error, OSError):
            continue
        values += [parser.get(section, "find-links", fallback="") for section in ("global", "install")]
    for value in values:
        for item in value.split():
            path = Path(item.removeprefix("file://"))
            if path.is_absolute() and path.is_dir():
                return str(path)
    return None


def _options_digest(opts: BuildOptions, kind: str) -> list[str]:
    if kind == "dockerfile":
        return []
    parts = [(TEMPLATES / "Dockerfile.pip").read_text()]
    if opts.wheelhouse:
        parts += sorted(f"{p.name}:{p.stat().st_size}" for p in opts.wheelhouse.iterdir() if p.is_file())
    if opts.constraints:
        parts.append(opts.constraints.read_text())
    return parts


def context_files(root: Path, exclude: tuple[Path, ...] = ()) -> list[str]:
    """`relative path:sha256` of what goes into a build context from root: not the datasets, the state folder,
    caches, VCS or virtual envs, nor what root's .dockerignore excludes."""
    return tree.content_digest(root, exclude, tree.read_ignore(root / ".dockerignore"))


def _link_tree(src: Path, dest: Path, exclude: tuple[Path, ...] = ()) -> None:
    """Hard-link (or copy) into a build context what context_files() hashes."""
    for rel, _ in tree.walk(src, exclude, tree.read_ignore(src / ".dockerignore")):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _link(src / rel, target)


def _link(src: Path, target: Path) -> None:
    try:
        os.link(src, target)
    except OSError:
        shutil.copy2(src, target)


def _source_digest(src: Path, exclude: tuple[Path, ...]) -> list[str]:
    """What a source puts into the image hash: a wheel's name and bytes, a directory's context files."""
    if src.is_file():
        return [f"{src.name}:{hashlib.sha256(src.read_bytes()).hexdigest()}"]
    return [f"source {src.name}", *context_files(src, exclude)]


def image_name(step: StepSpec) -> str:
    stem = step.env_file.stem if step.env_file else step.name
    if step.env_file and stem.lower() in {"dockerfile", "requirements", "environment", "env"}:
        stem = f"{step.env_file.parent.name}-{stem}"
    return "itwin-run/" + (re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "step")


def spec_for(step: StepSpec, wf: Workflow | None = None) -> ImageSpec:
    """Read a step's env file into an ImageSpec (raises ValidationError with file:line on bad input)."""
    env = step.env
    if env.image:
        return ImageSpec(kind="image", name=env.image, step=step.name, image=env.image)
    assert step.env_file is not None
    f = step.env_file
    name = image_name(step)
    exclude = (*wf.datasets.values(), wf.root / ".itwin-run") if wf else ()
    source_parts = [part for src in step.sources for part in _source_digest(src, exclude)]
    text = f.read_text(encoding="utf-8", errors="replace")
    lower = f.name.lower()
    if lower == "dockerfile" or lower.endswith(".dockerfile") or lower.startswith("dockerfile."):
        if step.sources:
            raise UsageError(f"{f}: a Dockerfile env builds its own context; 'source' is not used with it (step {step.name!r})")
        return ImageSpec(kind="dockerfile", name=name, step=step.name, env_file=f,
                         digest_parts=context_files(f.parent, exclude), exclude=exclude)
    kind = "conda" if f.suffix in {".yml", ".yaml"} else "requirements"
    reqs, local = local_requirements(f, text, conda_to_pip(f, text) if kind == "conda" else text,
                                     wf.root if wf else f.parent)
    local_parts = [part for path in local for part in _source_digest(path, exclude)]
    return ImageSpec(kind=kind, name=name, step=step.name, env_file=f, requirements=reqs, sources=step.sources,
                     local=local, digest_parts=[_requirement_lines(reqs), *source_parts, *local_parts],
                     exclude=exclude, source_parts=tuple(source_parts))


def _requirement_lines(reqs: str) -> str:
    """The requirements as pip reads them, for the image hash: no comments (`#` at the start or after a space), no
    blank lines. What goes into the image is the packages, whichever file and words named them: an edited comment
    rebuilds nothing, and env files with the same packages share one image."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in reqs.splitlines())
    return "\n".join(line for line in lines if line)


_LOCAL = re.compile(r"^(?:-e\s+|--editable[=\s]+)?((?:\./|\.\./|/|file:)\S*|\S+\.(?:whl|tar\.gz|zip))$")


def local_requirements(f: Path, text: str, reqs: str, root: Path) -> tuple[str, tuple[Path, ...]]:
    """Requirements that name local paths (`./libs/mypkg`, `../wheels/x.whl`, `-e ./pkg`): relative to the env
    file's folder (else the project root), part of the image hash, and installed from `./local/N` in the build
    context, with their dependencies, as pip would on the host. A path that does not exist is an error."""
    out, local, problems = [], [], []
    for line in reqs.splitlines():
        m = _LOCAL.match(line.split(" #")[0].strip())
        if not m or "://" in m.group(1).removeprefix("file://"):
            out.append(line)
            continue
        raw = m.group(1).removeprefix("file://").removeprefix("file:")
        path = next((p for p in (f.parent / raw, root / raw) if p.exists()), None)
        if path is None:
            at = next((f"{i}:{t.index(raw) + 1}" for i, t in enumerate(text.splitlines(), 1) if raw in t), "1:1")
            problems.append(f"{f}:{at}: {m.group(1)}: no such file or directory (relative paths are taken from "
                            f"{f.parent} or the project root)")
            continue
        path = path.resolve()
        out.append(f"./local/{len(local)}" + (f"/{path.name}" if path.is_file() else ""))
        local.append(path)
    if problems:
        raise ValidationError(problems)
    return "\n".join(out) + ("\n" if reqs.endswith("\n") else ""), tuple(local)


def conda_to_pip(f: Path, text: str) -> str:
    """A conda environment.yml with python + pip packages only, as a requirements list."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    data, lines = compose(text, str(f))
    problems: list[str] = []

    def problem(loc: tuple, msg: str) -> None:
        problems.append(f"{f}:{where(lines, loc)}: {dotted(loc)}: {msg}")

    if not isinstance(data, dict):
        raise ValidationError([f"{f}:1:1: top: an environment file is a mapping with 'dependencies'"])
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise ValidationError([f"{f}:{where(lines, ('dependencies',))}: dependencies: must be a list"])
    pip_lines: list[str] = []
    for i, dep in enumerate(deps):
        loc = ("dependencies", i)
        if isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            for j, p in enumerate(dep["pip"]):
                if not isinstance(p, str):
                    problem(loc + ("pip", j), "must be a pip requirement string")
                else:
                    pip_lines.append(p)
            continue
        if not isinstance(dep, str):
            problem(loc, "must be a package spec or a 'pip:' list")
            continue
        m = re.match(r"^\s*(?:[\w.-]+::)?([A-Za-z0-9_.-]+)\s*(.*)$", dep)
        pkg, ver = (m.group(1).lower(), m.group(2).strip()) if m else (dep, "")
        if pkg == "pip":
            continue
        if pkg == "python":
            spec = ver.replace(" ", "")
            if spec and spec[0].isdigit():
                spec = "==" + spec + (".*" if spec.count(".") < 2 else "")
            elif spec.startswith("=") and not spec.startswith("=="):
                spec = "=" + spec + (".*" if spec.count(".") < 2 else "")
            try:
                ok = not spec or SpecifierSet(spec).contains(BASE_PYTHON + ".0") or SpecifierSet(spec).contains(BASE_PYTHON)
            except InvalidSpecifier:
                problem(loc, f"cannot read the python version {dep!r}")
                continue
            if not ok:
                problem(loc, f"{dep!r} does not match the base image's Python {BASE_PYTHON}")
            continue
        pip_name = _PIP_NAMES.get(pkg, pkg)
        pin = ver.lstrip("=")
        hint = f"{pip_name}=={pin}" if pin and pin[0].isdigit() else pip_name + ver
        problem(loc, f"conda package {dep!r} is not supported (no conda channel is used): "
                     f"list it under 'pip:' as {hint!r}")
    if problems:
        raise ValidationError(problems)
    return "".join(p + "\n" for p in pip_lines)


# ---------------------------------------------------------------- image pin files


@dataclass(frozen=True)
class Pin:
    """A pushed step image, with digests: `image` is all of it (what Docker pulls); for a step with sources also its
    dependency image and an image of its sources' wheels, so that Apptainer converts the dependencies once and
    overlays the sources (a source edit then costs a small download, not a conversion of torch). Pushed by
    Apptainer, also the SIF (of all of it, or of its dependencies) and the sources' overlay, as oras:// artifacts."""

    image: str
    dependencies: str | None = None
    wheels: str | None = None
    sif: str | None = None
    overlay: str | None = None


def write_pins(path: Path, workflow: Path, pins: dict[str, Pin]) -> None:
    """step -> image reference with digest: what `itwin-run --images FILE` runs exactly."""
    import json

    layers = {step: {"dependencies": p.dependencies, "wheels": p.wheels} for step, p in pins.items() if p.wheels}
    sifs = {step: {"sif": p.sif, **({"overlay": p.overlay} if p.overlay else {})} for step, p in pins.items() if p.sif}
    data: dict[str, Any] = {"workflow": str(workflow), "images": {step: p.image for step, p in pins.items()}}
    data |= {"layers": layers} if layers else {}
    data |= {"sifs": sifs} if sifs else {}
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_pins(path: Path) -> dict[str, Pin]:
    import json

    try:
        data = json.loads(path.read_text())
        images = data["images"]
        layers, sifs = data.get("layers") or {}, data.get("sifs") or {}
        assert isinstance(images, dict) and all(isinstance(v, str) for v in images.values())
        assert isinstance(layers, dict) and all(isinstance(v, dict) and isinstance(v.get("dependencies"), str)
                                                and isinstance(v.get("wheels"), str) for v in layers.values())
        assert isinstance(sifs, dict) and all(isinstance(v, dict) and isinstance(v.get("sif"), str) and isinstance(
            v.get("overlay", ""), str) for v in sifs.values())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such image pin file") from None
    except (ValueError, KeyError, AssertionError, TypeError, AttributeError):
        raise UsageError(f"{path}: not an itwin-run image pin file (expected {{\"images\": {{step: reference}}}})") from None
    return {step: Pin(ref, **layers.get(step, {}), **sifs.get(step, {})) for step, ref in images.items()}
