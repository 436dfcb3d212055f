"""CWL figure, one run (issue: CWL mode): wall time of the toy workflow in --cwl mode / classical mode.

Run: .venv/bin/python bench/cwl.py [--repeat N]
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
    subprocess.run([ITWIN, *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-cwl-") as tmp:
        toy = Path(tmp, "toy")
        shutil.copytree(REPO / "tests" / "toy", toy, ignore=shutil.ignore_patterns("data", ".itwin-run"))
        subprocess.run([ITWIN, "export-cwl", "workflow.yml", "-o", "cwl"], cwd=toy, check=True, capture_output=True)
        (toy / "workflow.yml").write_text((toy / "workflow.yml").read_text() + "\nworkflowFileCWL: cwl/workflow.cwl\n")
        runs: dict[str, list[float]] = {"classical": [], "cwl": []}
        for _ in range(args.repeat):
            runs["classical"].append(timed(["--force", "workflow.yml"], toy))  # run, not skip as up to date
            runs["cwl"].append(timed(["--cwl", "workflow.yml"], toy))
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"toy workflow (3 steps), median of {args.repeat} (seconds):")
        for k, v in runs.items():
            print(f"  {k:10s} {med[k]:.3f}   runs: {' '.join(f'{x:.2f}' for x in v)}")
        print(f"--cwl / classical = {med['cwl'] / med['classical']:.2f}")


if __name__ == "__main__":
    main()
