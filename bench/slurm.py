"""SLURM figures, one run (issue: runs you can trust), local executor and SLURM side by side (same engine, Apptainer):

  - added latency per step: a 20-step chain of trivial steps, (SLURM - local) / 20 (goal <= 1.5 s)
  - controller calls while following it: squeue/scontrol/sacct calls per second, and the most in any one second
    (goal <= 1), counted by wrappers put first on PATH; sbatch calls (one per step) reported apart
  - with --sweep N: the same for one sweep of N trivial points instead of the chain (one job array: 1 sbatch call),
    the latency per point over local (points one at a time locally, `parallel` unset under SLURM)

Needs the cluster from ../shared/hpc/slurm/start-slurm.sh and apptainer on PATH.
Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/slurm.py [--steps N | --sweep N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import baseline_env, chain, timed, toy  # noqa: E402

POLLING = ("squeue", "scontrol", "sacct")
POINT = "import sys, json, pathlib; pathlib.Path(sys.argv[2], 'metrics.json').write_text(json.dumps({'x': 1}))"


def wrappers(where: Path, log: Path) -> None:
    """A wrapper per SLURM command that notes the time of each call, then runs the real one."""
    where.mkdir()
    for name in (*POLLING, "sbatch", "scancel"):
        real = shutil.which(name)
        if real:
            (where / name).write_text(f"#!/bin/sh\necho \"$(date +%s.%N) {name}\" >> {log}\nexec {real} \"$@\"\n")
            (where / name).chmod(0o755)


def span_rate(times: list[float]) -> float:
    """N calls one second apart span N-1 seconds: the rate is the calls after the first over that span."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sweep", type=int, help="one sweep of this many trivial points instead of the chain")
    ap.add_argument("--baseline", type=Path, help="another checkout: its SLURM executor runs the chain too (PYTHONPATH)")
    args = ap.parse_args()
    n = args.sweep or args.steps
    with tempfile.TemporaryDirectory(prefix="itwin-bench-slurm-") as tmp:
        root = toy(Path(tmp, "toy"))
        (root / "point.py").write_text(POINT)
        (root / "chain.yml").write_text(chain(n, "./envs/requirements.txt") if not args.sweep else
                                        "datasets: {d: {location: ./data/d}}\nsteps:\n  - fit: {input: null, output: d, "
                                        "command: python ./point.py, env: {file: ./envs/requirements.txt}, sweep: "
                                        f"{{grid: {{x: {list(range(n))}}}, best: {{metric: x}}}}}}\n")
        log = Path(tmp, "calls.log")
        wrappers(Path(tmp, "bin"), log)
        env = {**os.environ, "PATH": f"{tmp}/bin:{os.environ['PATH']}"}
        engine = ["--engine", "apptainer", "--force"]
        timed([*engine, "chain.yml"], root)  # images and SIFs
        local = timed([*engine, "chain.yml"], root)
        log.write_text("")
        slurm = timed([*engine, "--executor", "slurm", "chain.yml"], root, env=env)
        calls = [line.split() for line in log.read_text().splitlines()]
        baseline = None
        if args.baseline:
            log.write_text("")
            baseline = timed([*engine, "--executor", "slurm", "chain.yml"], root,
                             env=baseline_env(args.baseline, env))
            base_polls = sorted(float(t) for t, name in (line.split() for line in log.read_text().splitlines())
                                if name in POLLING)
    polls = sorted(float(t) for t, name in calls if name in POLLING)
    kinds = Counter(name for _, name in calls if name in POLLING)
    submits = sum(1 for _, name in calls if name == "sbatch")
    per_second = Counter(int(t) for t in polls)
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    rate = span_rate(polls)
    what = f"{n}-point sweep of trivial points" if args.sweep else f"{n}-step chain of trivial steps"
    print(f"{what} (Apptainer): local {local:.2f} s, SLURM {slurm:.2f} s")
    print(f"added latency per {'point' if args.sweep else 'step'} under SLURM: {(slurm - local) / n:.2f} s  "
          "(goal <= 1.5 s)")
    print(f"controller calls following the run: {len(polls)} ({', '.join(f'{k} {v}' for k, v in kinds.items())}) "
          f"in a run of {slurm:.1f} s: {rate:.2f}/s between the first and the last, shortest gap "
          f"{min(gaps, default=0):.2f} s, at most {max(per_second.values(), default=0)} in one clock second  "
          f"(goal <= 1); sbatch calls: {submits}")
    if baseline is not None:
        print(f"baseline ({args.baseline}): SLURM {baseline:.2f} s, {(baseline - local) / n:.2f} s per step added, "
              f"{span_rate(base_polls):.2f} controller calls/s between the first and the last")


if __name__ == "__main__":
    main()
