"""Fault injection (issue: when the runner dies, not the run): a 5-step chain is started and its runner ended at a
random moment, N trials, the signals taken in turn (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGKILL); right after each,
the same workflow is run again. Reported, each must be 0:

  - containers of the ended run still there 10 s after the signal
  - records left `running` once `history` has read them
  - steps recorded done (a completion record) whose output is incomplete (no end marker)
  - duplicate writers: a step that started while another container still wrote the same dataset (each step keeps a
    heartbeat file in its output while it writes, and notes a fresh one of another step that it finds at its start)

and, for SIGKILL, the time from the signal to no container of that run (median, max).

Run: .venv/bin/python bench/faults.py [--trials 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, chain, toy  # noqa: E402

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL]
STEP = r'''import os, pathlib, sys, threading, time, uuid
out = pathlib.Path(sys.argv[sys.argv.index("--output") + 1])
me = out / f"heartbeat-{uuid.uuid4().hex}"
others = [p for p in out.glob("heartbeat-*") if time.time() - p.stat().st_mtime < 0.5]
if others:  # evidence kept in the output (the only place a step may write)
    (out / f"duplicate-{me.name}").write_text(" ".join(p.name for p in others))
stop = threading.Event()
def beat():
    while not stop.wait(0.1):
        me.touch()
me.touch()
threading.Thread(target=beat, daemon=True).start()
(out / "data.txt").write_text("begin\n")
time.sleep(float(sys.argv[sys.argv.index("--seconds") + 1]))
with open(out / "data.txt", "a") as f:
    f.write("end\n")
stop.set()
me.unlink()
'''


def newest_run(root: Path) -> dict:
    runs = sorted((root / ".itwin-run" / "runs").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text()) if runs else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    client = docker.from_env()
    left = running = incomplete = 0
    kill_gone: list[float] = []
    with tempfile.TemporaryDirectory(prefix="itwin-bench-faults-") as tmp:
        root = toy(Path(tmp, "toy"))
        root.chmod(0o755)
        (root / "step.py").write_text(STEP)
        (root / "chain.yml").write_text(chain(5, "./envs/requirements.txt", "python step.py", "{seconds: 0.6}"))
        subprocess.run([ITWIN, "chain.yml"], cwd=root, check=True, capture_output=True)  # the image, once
        for trial in range(args.trials):
            sig = SIGNALS[trial % len(SIGNALS)]
            before = newest_run(root).get("run_id")
            proc = subprocess.Popen([ITWIN, "--force", "chain.yml"], cwd=root, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            while newest_run(root).get("run_id") == before:  # the run exists
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 4.0))
            run_id = newest_run(root)["run_id"]
            proc.send_signal(sig)
            sent = time.monotonic()
            proc.wait(timeout=60)
            done = [p for p in (root / ".itwin-run" / "steps" / "chain.yml").glob("*.json")]
            for record in done:  # complete records of this run: the output must be whole
                rec = json.loads(record.read_text())
                if rec.get("run") == run_id and "end" not in Path(rec["output"], "data.txt").read_text():
                    incomplete += 1
            rerun = subprocess.Popen([ITWIN, "chain.yml"], cwd=root, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            labelled = {"label": f"org.itwin-run.run={run_id}"}
            while client.containers.list(ignore_removed=True, all=True, filters=labelled) and time.monotonic() - sent < 10:
                time.sleep(0.05)
            gone = time.monotonic() - sent
            left += len(client.containers.list(ignore_removed=True, all=True, filters=labelled))
            if sig == signal.SIGKILL:
                kill_gone.append(gone)
            if rerun.wait(timeout=300) != 0:
                raise SystemExit(f"trial {trial}: the rerun after {sig.name} failed")
            subprocess.run([ITWIN, "history"], cwd=root, check=True, capture_output=True)
            m = json.loads((root / ".itwin-run" / "runs" / run_id / "manifest.json").read_text())
            running += m.get("status") == "running"
        duplicates = len(list((root / "data").glob("d*/duplicate-*")))
    print(f"{args.trials} trials (5-step chain; {', '.join(s.name for s in SIGNALS)} in turn, at a random moment "
          f"of 0-4 s; seed {args.seed}):")
    print(f"  containers left 10 s after the signal: {left}")
    print(f"  records left 'running' after `history`: {running}")
    print(f"  steps recorded done with an incomplete output: {incomplete}")
    print(f"  duplicate writers seen: {duplicates}")
    if kill_gone:
        print(f"  SIGKILL to no container of the run: median {statistics.median(kill_gone):.2f} s, "
              f"max {max(kill_gone):.2f} s ({len(kill_gone)} trials)")


if __name__ == "__main__":
    main()
