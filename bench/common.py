"""What the benchmarks share: the CLI in this venv, a timed run of it, another checkout's runner to compare with, and
the toy project in a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ITWIN = str(BIN / "itwin-run")


def timed(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds one `itwin-run ARGS` takes (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([ITWIN, *args], cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def baseline_env(checkout: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (this process's by default) running another checkout's runner through PYTHONPATH, its modules
    byte-compiled first as `make` compiles this checkout's: where PYTHONDONTWRITEBYTECODE is set, an uncompiled
    checkout compiles every module it imports at each start (85 ms of a 3-step run here), which a comparison would
    count against it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-x", "runner/data", str(checkout / "runner")],
                   check=True, capture_output=True)
    return {**(os.environ if env is None else env), "PYTHONPATH": str(checkout.resolve())}


def remove_project(tmp: Path) -> None:
    """A benchmark's project folder, with what its steps wrote as another uid (as root, steps run unprivileged)."""
    subprocess.run(["docker", "run", "--rm", "-v", f"{tmp}:/t", "itwin-run/base:latest", "rm", "-rf", "/t/data"],
                   capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


def toy(dest: Path) -> Path:
    """A fresh copy of the toy project (three steps, one env file of each kind)."""
    shutil.copytree(REPO / "tests" / "toy", dest, ignore=shutil.ignore_patterns("data", ".itwin-run"))
    return dest


def mnist(root: Path) -> Path:
    """A copy of the MNIST use case and itwinai in root (the project the training benchmarks build)."""
    shutil.copytree(REPO / "use-cases" / "mnist", root / "use-cases" / "mnist")
    shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    return root


def chain(n: int, env_file: str = "./bench-env/requirements.txt", command: str = "python -c pass",
          params: str = "") -> str:
    """A workflow of n steps (trivial ones by default, which write nothing), each reading the one before."""
    lines = ["datasets:"] + [f"  d{i}: {{location: ./data/d{i}}}" for i in range(n)] + ["steps:"]
    for i in range(n):
        inp = f"d{i - 1}" if i else "null"
        lines.append(f"  - s{i}: {{input: {inp}, output: d{i}, command: \"{command}\", "
                     f"env: {{file: {env_file}}}, allow_empty_output: true{', params: ' + params if params else ''}}}")
    return "\n".join(lines) + "\n"
