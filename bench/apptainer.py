"""Apptainer engine figures, one run (issue: Apptainer engine):

  - per-step overhead: a trivial step through ApptainerRunner.run (apptainer exec of the SIF) vs DockerRunner.run
    (docker-py create/start/wait/remove) on the same image, alternating (goal: apptainer <= docker)
  - SIF conversion time (docker-daemon:// -> SIF) of the base image and of the MNIST training image

Needs a Docker daemon and apptainer on PATH (tests: /tmp/applab/bin from ../shared/hpc/apptainer).
Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/apptainer.py [--repeat N] [--skip-training]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.engines.apptainer import ApptainerRunner
from runner.engines.base import Job, Mount
from runner.engines.docker import DockerBuilder, DockerRunner

REPO = Path(__file__).resolve().parent.parent
COMPRESSION = os.environ.get("ITWIN_RUN_SIF_COMPRESSION") or "lz4"  # the engine's default


def convert(image: str, dest: Path) -> float:
    cmd = ["apptainer", "build", "--force", "--mksquashfs-args", f"-comp {COMPRESSION}"]
    start = time.perf_counter()
    subprocess.run([*cmd, str(dest), f"docker-daemon://{image}"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    docker = DockerRunner()
    apptainer = ApptainerRunner()
    base = DockerBuilder().base()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-app-", dir="/tmp") as tmp:
        work = Path(tmp)
        sif = work / "base.sif"
        times = {"base": convert(base, sif)}
        job = Job(step="trivial", image="", argv=["python", "-c", "print('ok')"], workdir=work,
                  mounts=[Mount(work, work, True)], env={}, user=f"{os.getuid()}:{os.getgid()}")
        runs: dict[str, list[float]] = {"docker": [], "apptainer": [], "raw docker run": [], "raw apptainer exec": []}
        raw = {"raw docker run": ["docker", "run", "--rm", base],
               "raw apptainer exec": ["apptainer", "exec", "--cleanenv", "--containall", str(sif)]}
        docker.begin({"org.itwin-run.run": "bench"})
        try:
            for _ in range(args.repeat):
                for name, engine, image in (("docker", docker, base), ("apptainer", apptainer, str(sif))):
                    job.image = image
                    lines: list[str] = []
                    start = time.perf_counter()
                    assert engine.run(job, lines.append) == 0 and lines == ["ok"], lines
                    runs[name].append(time.perf_counter() - start)
                for name, cmd in raw.items():
                    start = time.perf_counter()
                    subprocess.run([*cmd, "python", "-c", "print('ok')"], check=True, capture_output=True)
                    runs[name].append(time.perf_counter() - start)
        finally:
            docker.end()
        if not args.skip_training:
            out = subprocess.run([str(Path(sys.executable).parent / "itwin-run"), "build",
                                  "use-cases/mnist/training-workflow.yml"], cwd=REPO, check=True, capture_output=True,
                                 text=True).stdout
            training = dict(line.split("\t") for line in out.splitlines())["ml-training"]
            times["training"] = convert(training, work / "training.sif")
            size = (work / "training.sif").stat().st_size
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"trivial step through the engine, median of {args.repeat} (seconds):")
        for k, v in runs.items():
            print(f"  {k:18s} {med[k]:.3f}   runs: {' '.join(f'{x:.2f}' for x in v)}")
        print(f"apptainer / docker engine per-step = {med['apptainer'] / med['docker']:.2f}  (goal <= 1.0)")
        print(f"apptainer engine / raw docker run = {med['apptainer'] / med['raw docker run']:.2f}")
        print(f"SIF conversion ({COMPRESSION}): base {times['base']:.1f}s ({sif.stat().st_size / 1e6:.0f} MB)", end="")
        if "training" in times:
            print(f", training {times['training']:.1f}s ({size / 1e6:.0f} MB)", end="")
        print()


if __name__ == "__main__":
    main()
