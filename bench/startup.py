"""What itwin-run costs before any step: `itwin-run --help` and a no-op rerun (every step up to date) of a 3-step
chain, wall time side by side with another checkout's (--baseline, through PYTHONPATH) in alternating rounds, and
the imports of each (`python -X importtime`: their total, and the 10 modules slowest by their own time).

Run: .venv/bin/python bench/startup.py [--repeat N] [--baseline CHECKOUT]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, baseline_env, chain, remove_project  # noqa: E402


def wall(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([ITWIN, *args], cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def slowest_imports(args: list[str], cwd: Path, env: dict[str, str], top: int = 10) -> tuple[float, list[str]]:
    """All imports' time (the top-level modules' cumulative, ms) and the `top` modules slowest by their own time."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    total, rows = 0.0, []
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            if not own.strip().isdigit():
                continue  # the header
            rows.append((int(own) / 1000, name.strip()))
            if not name[1:].startswith(" "):
                total += int(cumulative) / 1000
    rows.sort(reverse=True)
    return total, [f"{ms:6.1f} ms  {name}" for ms, name in rows[:top]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--baseline", type=Path, help="another checkout: its runner, through PYTHONPATH")
    args = ap.parse_args()
    if args.baseline and not (args.baseline / "runner").is_dir():
        ap.error(f"--baseline {args.baseline}: no runner/ there (a checkout of another commit)")
    envs = {"itwin-run": dict(os.environ)}
    if args.baseline:
        envs["baseline"] = baseline_env(args.baseline)
    tmp = Path(tempfile.mkdtemp(prefix="itwin-bench-"))
    tmp.chmod(0o755)
    try:
        # A project each: a baseline's images are other tags, so in one project each run would find the steps' images
        # changed by the other's, and run them again.
        projects = {name: tmp / name for name in envs}
        for name, env in envs.items():
            (projects[name] / "bench-env").mkdir(parents=True)
            (projects[name] / "workflow.yml").write_text(chain(3))
            (projects[name] / "bench-env" / "requirements.txt").write_text("# base only\n")
            # every step done once: the timed reruns find them up to date
            subprocess.run([ITWIN, "--force", "workflow.yml"], cwd=projects[name], check=True, capture_output=True,
                           env=env)
        cases = {"--help": ["--help"], "no-op rerun": ["workflow.yml"]}
        times: dict[tuple[str, str], list[float]] = {(c, e): [] for c in cases for e in envs}
        for _ in range(args.repeat):
            for case, argv in cases.items():
                for name, env in envs.items():
                    times[case, name].append(wall(argv, projects[name], env))
        print(f"median of {args.repeat} alternating rounds (seconds):")
        for case in cases:
            line = "   ".join(f"{name} {statistics.median(times[case, name]):.3f}" for name in envs)
            ratio = (f"   ratio {statistics.median(times[case, 'itwin-run']) / statistics.median(times[case, 'baseline']):.2f}"
                     if args.baseline else "")
            print(f"  {case:12s} {line}{ratio}")
        for case, argv in cases.items():
            for name, env in envs.items():
                total, top = slowest_imports(argv, projects[name], env)
                print(f"\n{case}, {name}: imports {total:.0f} ms (-X importtime), the 10 slowest by their own time:")
                print("\n".join(f"  {row}" for row in top))
    finally:
        remove_project(tmp)


if __name__ == "__main__":
    main()
