"""SIF conversion: where `apptainer build` unpacks the image, side by side in one run.

`itwin-run build --engine apptainer` of the toy (three step images of ~213 MB) into an empty SIF cache, rounds
alternating between APPTAINER_TMPDIR on this disk (Apptainer's own default, /tmp) and itwin-run's default (a folder
in /dev/shm where it has room). With --mnist, the MNIST training image's conversion too.
Needs a Docker daemon and apptainer on PATH (after the tests' ../shared/hpc/apptainer/setup-apptainer.sh):
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
    disk = root / "unpack"
    env = {k: v for k, v in os.environ.items() if k not in ("APPTAINER_TMPDIR", "TMPDIR")}
    places = {"disk": {**env, "APPTAINER_TMPDIR": str(disk)}, "memory": env}
    projects = [("toy", toy(root / "toy"), "workflow.yml")]
    if args.mnist:
        projects.append(("mnist", mnist(root), "use-cases/mnist/training-workflow.yml"))
    try:
        for name, project, workflow in projects:
            timed(["build", workflow], cwd=project)  # the Docker images, made before anything is timed
            times: dict[str, list[float]] = {p: [] for p in places}
            for r in range(1 if name == "mnist" else args.rounds):
                for place in (places if r % 2 == 0 else reversed(list(places))):
                    cache = root / "sif"
                    shutil.rmtree(cache, ignore_errors=True)
                    disk.mkdir(exist_ok=True)
                    run_env = {**places[place], "ITWIN_RUN_SIF_CACHE": str(cache)}
                    times[place].append(timed(["build", "--engine", "apptainer", workflow], cwd=project, env=run_env))
            disk_s, memory_s = statistics.median(times["disk"]), statistics.median(times["memory"])
            print(f"{name}: converted on disk {disk_s:.1f} s, in memory {memory_s:.1f} s (medians of "
                  f"{len(times['disk'])}); memory / disk = {memory_s / disk_s:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
