"""Build a step's sources (env.source) into wheels, inside the image (run by Dockerfile.sources).

A source whose build requirements the image already has (setuptools is in every base image, with `wheel` for
setuptools < 70.1) is built with them, without pip's isolated build environment: nothing is fetched, so it builds
offline and a source edit rebuilds faster. Any other source gets pip's isolated build, which fetches its
requirements as pip always does. Usage: python build-sources.py OUT TARGET...
"""

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

LEGACY = ["setuptools>=40.8.0"]  # PEP 517's default for a source without [build-system]


def build_requirements(target: Path) -> list[str]:
    pyproject = target / "pyproject.toml"
    if not pyproject.is_file():
        return LEGACY
    system = tomllib.loads(pyproject.read_text()).get("build-system", {})
    requires = list(system.get("requires", LEGACY))
    backend = system.get("build-backend", "setuptools.build_meta")
    if backend.startswith("setuptools") and not any(r.startswith("wheel") for r in requires):
        requires.append("wheel")  # what setuptools < 70.1 asks for when it builds a wheel
    return requires


def installed(requirement: str) -> bool:
    from pip._vendor.packaging.requirements import Requirement

    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate():
        return True
    if req.name == "wheel":
        try:  # setuptools 70.1+ builds wheels itself
            if not Requirement("setuptools<70.1").specifier.contains(metadata.version("setuptools")):
                return True
        except metadata.PackageNotFoundError:
            pass
    try:
        return req.specifier.contains(metadata.version(req.name), prereleases=True)
    except metadata.PackageNotFoundError:
        return False


def main() -> None:
    out, targets = sys.argv[1], [Path(t) for t in sys.argv[2:]]
    local, isolated = [], []
    for target in targets:
        try:
            ready = target.is_file() or all(installed(r) for r in build_requirements(target))
        except Exception as exc:  # an unreadable pyproject.toml, say: pip's own build says what is wrong
            print(f"build-sources: {target}: {exc}", file=sys.stderr)
            ready = False
        (local if ready else isolated).append(str(target))
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--prefer-binary", "-w", out]
    if local:
        print(f"build-sources: with the image's build tools: {' '.join(local)}", flush=True)
        subprocess.run([*pip, "--no-build-isolation", *local], check=True)
    if isolated:
        print(f"build-sources: in pip's isolated build environment: {' '.join(isolated)}", flush=True)
        subprocess.run([*pip, *isolated], check=True)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
