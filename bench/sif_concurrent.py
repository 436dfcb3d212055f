"""One SIF cache for many processes, one run (issue: on the HPC node): 4 `itwin-run build --engine apptainer` started
together on the toy project, whose 3 step images are new to the SIF cache (their Docker images built first), against
1 such build alone on other new images. Counts the conversions (`apptainer build` calls, through a wrapper before
apptainer on PATH): goal exactly 1 per image; prints the wall time of the 4 against the 1.

Needs a Docker daemon, apptainer and mksquashfs (tests: /tmp/applab/bin from ../shared/hpc/apptainer).
Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/sif_concurrent.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, toy  # noqa: E402
from tests.services import change_packages  # noqa: E402

RUNS = 4


def fresh(root: Path, name: str) -> Path:
    """The toy with step images no cache has yet (a new pin in each env file), their Docker images built."""
    project = toy(root / name)
    stamp = time.time_ns()
    change_packages(project / "envs" / "requirements.txt", stamp)
    change_packages(project / "envs" / "environment.yml", stamp)
    dockerfile = project / "envs" / "summarize" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"LABEL org.itwin-run.bench={stamp}\n")
    subprocess.run([ITWIN, "build", "workflow.yml"], cwd=project, check=True, capture_output=True)
    return project


def builds(project: Path, runs: int, env: dict[str, str]) -> float:
    """Wall time of `runs` apptainer builds of the project started together (each must succeed)."""
    start = time.perf_counter()
    procs = [subprocess.Popen([ITWIN, "build", "--engine", "apptainer", "workflow.yml"], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(runs)]
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
    return time.perf_counter() - start


def main() -> None:
    real = shutil.which("apptainer")
    assert real, "apptainer is not on PATH (PATH=/tmp/applab/bin:$PATH)"
    with tempfile.TemporaryDirectory(prefix="itwin-bench-sif-concurrent-") as tmp:
        root = Path(tmp)
        log = root / "conversions.log"
        wrapper = root / "bin" / "apptainer"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\n[ "$1" = build ] && echo "$$ $*" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}", "ITWIN_RUN_SIF_CACHE": str(root / "sif")}
        one, many = fresh(root, "one"), fresh(root, "many")
        alone = builds(one, 1, env)
        after_one = len(log.read_text().splitlines())
        together = builds(many, RUNS, env)
        conversions = len(log.read_text().splitlines()) - after_one
    print(f"toy project, 3 new step images, one shared SIF cache ({os.cpu_count()} cores):")
    print(f"  1 build alone:           {alone:6.1f} s, {after_one} conversions")
    print(f"  {RUNS} builds started together: {together:6.1f} s, {conversions} conversions (goal: 3, one per image)")
    print(f"{RUNS} together / 1 alone = {together / alone:.2f}")


if __name__ == "__main__":
    main()
