"""SLURM figure, one run (issue: SLURM executor): submission-to-completion time per step of the toy workflow under
SLURM vs the local executor (same engine, Apptainer). Needs the cluster from ../shared/hpc/slurm/start-slurm.sh and
apptainer on PATH.

Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/slurm.py [--repeat N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ITWIN = str(Path(sys.executable).parent / "itwin-run")


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([ITWIN, "--engine", "apptainer", "--force", *args, "workflow.yml"], cwd=cwd, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-slurm-") as tmp:
        toy = Path(tmp, "toy")
        shutil.copytree(REPO / "tests" / "toy", toy, ignore=shutil.ignore_patterns("data", ".itwin-run"))
        timed([], toy)  # images and SIFs
        local, slurm = [], []
        for _ in range(args.repeat):
            local.append(timed([], toy))
            slurm.append(timed(["--executor", "slurm"], toy))
    lo, sl = statistics.median(local) / 3, statistics.median(slurm) / 3
    print(f"toy workflow (3 dependent steps), median of {args.repeat}, per step (seconds):")
    print(f"  local  {lo:.2f}   runs: {' '.join(f'{x:.2f}' for x in local)} (whole workflow)")
    print(f"  slurm  {sl:.2f}   runs: {' '.join(f'{x:.2f}' for x in slurm)} (whole workflow)")
    print(f"SLURM overhead per step: +{sl - lo:.2f} s ({sl / lo:.1f}x the local executor)")


if __name__ == "__main__":
    main()
