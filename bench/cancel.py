"""Cancellation figures, one run (issue: runs you can trust): time from SIGINT to exit at three moments, and the
labelled containers left afterwards (goal: <= 10 s, none).

  (a) while an image builds
  (b) once the run's network holder exists, before the step's container starts
  (c) mid-step (the step's container runs)

Run: .venv/bin/python bench/cancel.py
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, timed, toy  # noqa: E402
from tests.services import change_packages  # noqa: E402

SLOW = ("datasets: {a: {location: ./data/a}}\nsteps:\n"
        "  - slow: {output: a, command: \"python -c \\\"import time; time.sleep(120)\\\"\", "
        "env: {file: ./envs/requirements.txt}}\n")


def wait_for(check, limit: float = 300) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.01)
    raise SystemExit("the moment never came")


def interrupt(root: Path, moment) -> tuple[float, int, int]:
    proc = subprocess.Popen([ITWIN, "slow.yml"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: moment(proc))
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    took = time.monotonic() - start
    time.sleep(0.5)  # the network holder is removed by the daemon right after it is killed
    left = len(docker.from_env().containers.list(ignore_removed=True, all=True, filters={"label": "org.itwin-run.run"}))
    return took, proc.returncode, left


def main() -> None:
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-cancel-") as tmp:
        root = toy(Path(tmp, "toy"))
        (root / "slow.yml").write_text(SLOW)
        timed(["build", "slow.yml"], root)
        results = {}
        env = root / "envs" / "requirements.txt"
        built = env.read_text()
        change_packages(env, time.time_ns())  # a new image: a build starts
        results["(a) during an image build"] = interrupt(  # the build's `RUN pip install` container runs
            root, lambda p: any("pip install" in c["Command"] for c in client.api.containers(all=True)))
        env.write_text(built)
        results["(b) network holder up, step not started"] = interrupt(
            root, lambda p: bool(client.containers.list(
                ignore_removed=True, all=True, filters={"label": "org.itwin-run.role=network"})))
        results["(c) mid-step"] = interrupt(
            root, lambda p: bool(client.containers.list(ignore_removed=True, filters={"label": "org.itwin-run.step=slow"})))
    leftover_builds = [c for c in client.api.containers(all=True) if "pip install" in c["Command"]]
    print(f"build containers left after (a): {len(leftover_builds)}")
    for name, (took, code, left) in results.items():
        print(f"{name:45s} SIGINT to exit {took:5.2f} s, exit code {code}, labelled containers left {left}  "
              "(goal <= 10 s, 130, 0)")


if __name__ == "__main__":
    main()
