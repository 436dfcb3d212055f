"""Sweep figures, side by side in one run, on the surrogate use case (an 8-point grid, 3 epochs a point):

  - wall time of the sweep with `parallel: 2` against `parallel: 1` (both --jobs 2, --force), alternating rounds
  - image resolutions for the 8 points (distinct image ids in the run's record)
  - adding one grid value: how many points run (the new ones only); a rerun with nothing changed: how many run

Run after `make`: .venv/bin/python bench/sweep.py [--rounds N] [--cpus N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, REPO  # noqa: E402

WF = "use-cases/surrogate/sweep-workflow.yml"
GRID = "[16, 32, 64, 128]"


def project(root: Path) -> Path:
    shutil.copytree(REPO / "use-cases" / "surrogate", root / "use-cases" / "surrogate")
    shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    root.chmod(0o755)
    return root


def configure(root: Path, parallel: int, lrs: str = "[0.002, 0.005]", cpus: int | None = None) -> None:
    path = root / WF
    text = (REPO / WF).read_text()
    if cpus:  # each point on this many CPUs (its threads too): points side by side then share the machine
        text = text.replace("        source: [./itwinai, ./use-cases/surrogate/oscillator]\n      params:\n        config",
                            "        source: [./itwinai, ./use-cases/surrogate/oscillator]\n"
                            f"        vars: {{OMP_NUM_THREADS: {cpus}}}\n      resources: {{cpus: {cpus}}}\n"
                            "      params:\n        config", 1)
    for old, new in (("max-epochs: 10", "max-epochs: 3"), ("[32, 128]", GRID), ("[0.0005, 0.002]", lrs),
                     ("parallel: 2", f"parallel: {parallel}")):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


def itwin(root: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "ITWIN_RUN_WHEELHOUSE": os.environ.get("ITWIN_RUN_WHEELHOUSE", "/opt/wheels")}
    start = time.perf_counter()
    res = subprocess.run([ITWIN, "--jobs", "2", *args, WF], cwd=root, capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"itwin-run failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - start, res.stderr


def ran(stderr: str) -> list[str]:
    return [line.split(":")[0].removeprefix("run ") for line in stderr.splitlines() if line.startswith("run train.")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, help="resources.cpus of each point (default: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-sweep-") as tmp:
        root = project(Path(tmp))
        configure(root, 2, cpus=args.cpus)
        itwin(root)  # the image, the simulations, a first sweep
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for parallel in (1, 2):
                configure(root, parallel, cpus=args.cpus)
                seconds, err = itwin(root, "--force-step", "train")
                assert len(ran(err)) == 8, ran(err)
                times[parallel].append(seconds)
        record = json.loads(sorted((root / ".itwin-run" / "runs").glob("*/manifest.json"))[-1].read_text())
        images = {e.get("image_id") or e["image"] for name, e in record["steps"].items() if name.startswith("train.")}
        configure(root, 2, "[0.002, 0.005, 0.01]", cpus=args.cpus)
        _, err = itwin(root)
        added = ran(err)
        _, err = itwin(root)
        again = ran(err)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        each = f"resources.cpus {args.cpus} a point" if args.cpus else "no CPU limit"
        print(f"8-point sweep, 3 epochs a point, {each}, --jobs 2, {args.rounds} alternating round(s), medians:")
        print(f"  parallel: 1  {one:6.1f} s")
        print(f"  parallel: 2  {two:6.1f} s   ratio parallel 2 / parallel 1 = {two / one:.2f}")
        print(f"image resolutions for the 8 points: {len(images)} distinct image(s)")
        print(f"adding one learning rate (4 new points): {len(added)} point(s) ran: {', '.join(sorted(added))}")
        print(f"rerun with nothing changed: {len(again)} point(s) ran")


if __name__ == "__main__":
    main()
