"""SIF conversion: Apptainer's own (`apptainer build docker-daemon://`) against itwin-run's (docker export, one
mksquashfs), side by side in one run.

`itwin-run build --engine apptainer` of the toy (three step images of ~213 MB) into an empty SIF cache and an empty
Apptainer layer cache, rounds alternating between ITWIN_RUN_SIF_CONVERT=apptainer and the default. With --mnist, the
MNIST training image's conversion too (one round each). Both unpack where itwin-run picks (/dev/shm when it has room).
Needs a Docker daemon, root, and apptainer on PATH (after the tests' ../shared/hpc/apptainer/setup-apptainer.sh):
Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/sif.py [--rounds N] [--mnist]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import mnist, timed, toy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mnist", action="store_true", help="also the MNIST training image (one round)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="itwin-bench-sif-"))
    env = {k: v for k, v in os.environ.items() if k not in ("APPTAINER_TMPDIR", "TMPDIR", "ITWIN_RUN_SIF_CONVERT")}
    ways = {"apptainer build": {**env, "ITWIN_RUN_SIF_CONVERT": "apptainer"}, "export": env}
    projects = [("toy", toy(root / "toy"), "workflow.yml")]
    if args.mnist:
        projects.append(("mnist", mnist(root), "use-cases/mnist/training-workflow.yml"))
    try:
        for name, project, workflow in projects:
            timed(["build", workflow], cwd=project)  # the Docker images, made before anything is timed
            times: dict[str, list[float]] = {w: [] for w in ways}
            for r in range(1 if name == "mnist" else args.rounds):
                for way in (ways if r % 2 == 0 else reversed(list(ways))):
                    shutil.rmtree(root / "sif", ignore_errors=True)
                    shutil.rmtree(root / "layers", ignore_errors=True)
                    run_env = {**ways[way], "ITWIN_RUN_SIF_CACHE": str(root / "sif"),
                               "APPTAINER_CACHEDIR": str(root / "layers")}
                    times[way].append(timed(["build", "--engine", "apptainer", workflow], cwd=project, env=run_env))
            theirs, ours = statistics.median(times["apptainer build"]), statistics.median(times["export"])
            print(f"{name}: apptainer build {theirs:.1f} s, export {ours:.1f} s (medians of "
                  f"{len(times['export'])}); export / apptainer build = {ours / theirs:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
