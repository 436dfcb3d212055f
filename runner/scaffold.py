"""`itwin-run init`: a new project from a template (runner/data/init), with the itwinai wheel the ml template's
training image installs."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from runner import ui
from runner.errors import UsageError, UserError

TEMPLATES = ("basic", "ml")


def create(directory: Path, template: str, itwinai: Path | None) -> None:
    """Write the template's files into `directory` (empty or new); for `ml`, the itwinai wheel beside them."""
    from importlib import resources

    if template not in TEMPLATES:
        raise UsageError(f"--template {template}: not a template (one of: {', '.join(TEMPLATES)})")
    if itwinai and template != "ml":
        raise UsageError("--itwinai: only with --template ml")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{directory}: not empty; itwin-run init writes only into an empty or new folder")
    files: list[tuple[str, bytes]] = []

    def collect(node, rel: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name == "__pycache__":
                continue
            if child.is_dir():
                collect(child, f"{rel}{child.name}/")
            else:
                files.append((f"{rel}{child.name}".replace("gitignore", ".gitignore"), child.read_bytes()))
    collect(resources.files("runner") / "data" / "init" / template, "")
    collect(resources.files("runner") / "data" / "init" / "common", "")  # every template's: sites/example.yml
    wheel: Path | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if template == "ml":  # before anything is written: a wheel that cannot be had leaves no half project
            wheel = itwinai_wheel(itwinai, Path(tmp))
            files = [(rel, data.replace(b"ITWINAI_WHEEL", wheel.name.encode())) for rel, data in files]
        for rel, data in files:
            dest = directory / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        if wheel:
            (directory / "wheels").mkdir()
            shutil.copy(wheel, directory / "wheels" / wheel.name)
    go = "" if directory.resolve() == Path.cwd().resolve() else f"cd {directory} && "
    ui.say(f" {directory.resolve()}: run it with `{go}itwin-run workflow.yml`", "green", prefix="created")


def itwinai_wheel(given: Path | None, tmp: Path) -> Path:
    """The itwinai wheel the ml template's training image installs: the one given, or built from a directory."""
    import importlib.util
    import subprocess

    import runner

    checkout = Path(runner.__file__).resolve().parents[1] / "itwinai"
    source = given or (checkout if (checkout / "pyproject.toml").is_file() else None)
    if source is None:
        raise UsageError("the ml template installs itwinai into its training image: pass --itwinai PATH (an itwinai "
                         "wheel, or the itwinai directory of an itwin-run checkout)")
    if source.is_file() and source.suffix == ".whl":
        return source
    if not (source / "pyproject.toml").is_file():
        raise UsageError(f"--itwinai {source}: neither a .whl file nor a package directory (no pyproject.toml)")
    # Offline sites: build with the setuptools at hand rather than fetch one, where it can make wheels (its own
    # bdist_wheel since 70.1, else the `wheel` package: a fresh venv has setuptools without either).
    local = importlib.util.find_spec("setuptools") is not None and (
        importlib.util.find_spec("wheel") is not None or importlib.util.find_spec("setuptools.command.bdist_wheel"))
    # Fixed timestamps (SOURCE_DATE_EPOCH): the same source makes the same wheel, so projects share their image.
    # The path resolved: pip reads a bare `itwinai-src` (Path drops the `./`) as a package name.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           *(["--no-build-isolation"] if local else []), "-w", str(tmp), str(source.resolve())],
                          capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    wheels = sorted(tmp.glob("itwinai-*.whl"))
    if done.returncode or not wheels:
        # the build's own last words (pip quotes them up to "[end of output]"), else pip's last error line
        said = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        ends = [i for i, ln in enumerate(said) if ln == "[end of output]"]
        errors = said[:ends[-1]] if ends else [ln for ln in said if re.search(r"error", ln, re.IGNORECASE)]
        raise UserError(f"could not build the itwinai wheel from {source}: {(errors or ['no wheel came out'])[-1]}")
    return wheels[0]
