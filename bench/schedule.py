"""Scheduler figures, one run (issue: scheduling, resume and reliability):

  (a) a warm rerun of the MNIST training workflow with nothing changed: wall time, containers started
      (goal < 1 s, 0 containers)
  (b) two independent CPU-bound steps (~5 s each): --jobs 2 / --jobs 1 wall time (goal <= 0.56)
  (c) a chain of trivial steps: per-step time at 200 steps / at 10 steps (goal: flat, ~1.0)

Run: .venv/bin/python bench/schedule.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, baseline_env, chain, mnist, timed  # noqa: E402

BUSY = "python -c \"import time; t = time.time(); all(time.time() - t < 5 for _ in iter(int, 1))\""


def containers_created(client, since: int) -> int:
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create", "label": "org.itwin-run.managed=1"})
    return sum(1 for _ in events)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, help="another checkout: its runner runs the chains too (PYTHONPATH)")
    args = ap.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-sched-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # a project as people have them (mkdtemp's are private): as root, steps run unprivileged
        # (a) warm rerun of the MNIST training workflow
        mnist(root)
        (root / "data" / "mnist" / "raw").mkdir(parents=True)
        for f in (REPO.parent / "shared" / "data" / "mnist").glob("*.gz"):
            shutil.copy(f, root / "data" / "mnist" / "raw")
        wf = root / "use-cases" / "mnist" / "training-workflow.yml"
        wf.write_text(wf.read_text().replace("config: ./use-cases/mnist/mnist-ai.yml",
                                             "config: ./use-cases/mnist/mnist-ai.yml\n        max-epochs: 1"))
        timed([str(wf.relative_to(root))], root)
        mark = int(time.time()) + 1
        time.sleep(mark - time.time() + 0.05)
        warm = [timed([str(wf.relative_to(root))], root) for _ in range(3)]
        started = containers_created(client, mark)
        # (b) two independent CPU-bound steps
        (root / "bench-env").mkdir()
        (root / "bench-env" / "requirements.txt").write_text("# base only\n")
        (root / "par.yml").write_text(
            "datasets: {a: {location: ./data/a}, b: {location: ./data/b}}\nsteps:\n"
            f"  - a: {{output: a, command: '{BUSY}', env: {{file: ./bench-env/requirements.txt}}, "
            "allow_empty_output: true}\n"
            f"  - b: {{output: b, command: '{BUSY}', env: {{file: ./bench-env/requirements.txt}}, "
            "allow_empty_output: true}\n")
        timed(["build", "par.yml"], root)
        j1 = timed(["--force", "--jobs", "1", "par.yml"], root)
        j2 = timed(["--force", "--jobs", "2", "par.yml"], root)
        # (c) chains of trivial steps
        per_step, base_step = {}, {}
        base_env = baseline_env(args.baseline) if args.baseline else None
        for n in (10, 200):
            (root / f"chain{n}.yml").write_text(chain(n))
            per_step[n] = timed(["--force", f"chain{n}.yml"], root) / n
            if base_env:
                base_step[n] = timed(["--force", f"chain{n}.yml"], root, base_env) / n
    print(f"(a) warm rerun of the MNIST training workflow: median {statistics.median(warm):.2f} s "
          f"(runs {' '.join(f'{x:.2f}' for x in warm)}), containers started: {started}  (goal < 1 s, 0)")
    print(f"(b) two independent 5 s CPU-bound steps: --jobs 1 {j1:.2f} s, --jobs 2 {j2:.2f} s, "
          f"ratio {j2 / j1:.2f}  (goal <= 0.56)")
    print(f"(c) chain of trivial steps: {per_step[10]:.3f} s/step at 10 steps, {per_step[200]:.3f} s/step at 200, "
          f"ratio {per_step[200] / per_step[10]:.2f}  (goal: flat)")
    if base_step:
        print(f"    baseline ({args.baseline}): {base_step[10]:.3f} s/step at 10, {base_step[200]:.3f} at 200; this / "
              f"baseline {per_step[10] / base_step[10]:.2f} at 10, {per_step[200] / base_step[200]:.2f} at 200")


if __name__ == "__main__":
    main()
