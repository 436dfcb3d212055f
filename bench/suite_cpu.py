"""Where a command's CPU goes, by program: `make test` by default (the suite is CPU-bound on 2 cores, so its wall time
falls only with the CPU its tests spend). Every process that ends while it runs is counted, those in containers
too, through the kernel's process accounting (`accton`, `dump-acct`: Debian's acct package; root).

Prints the wall time, the CPU seconds against what the cores could have given, and the programs that spent the most.

Run as root: .venv/bin/python bench/suite_cpu.py [--top N] [-- COMMAND ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def by_program(acct: Path) -> list[tuple[str, int, float]]:
    """(program, processes, CPU seconds) from `dump-acct` (one line a process: its user and system times in clock
    ticks, 100 a second), most CPU first."""
    out = subprocess.run(["dump-acct", str(acct)], capture_output=True, text=True, check=True).stdout
    calls: dict[str, int] = {}
    cpu: dict[str, float] = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) > 4:
            calls[fields[0]] = calls.get(fields[0], 0) + 1
            cpu[fields[0]] = cpu.get(fields[0], 0.0) + (float(fields[2]) + float(fields[3])) / 100
    return sorted(((name, calls[name], cpu[name]) for name in calls), key=lambda r: -r[2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=20, help="programs to list")
    ap.add_argument("command", nargs="*", default=["make", "test"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("suite_cpu: process accounting needs root")
    if not (shutil.which("accton") and shutil.which("dump-acct")):
        sys.exit("suite_cpu: no accton/dump-acct here: apt-get install acct")
    with tempfile.TemporaryDirectory(prefix="itwin-acct-") as tmp:
        acct = Path(tmp) / "acct"
        acct.touch()
        subprocess.run(["accton", str(acct)], check=True, capture_output=True)
        start = time.monotonic()
        try:
            code = subprocess.run(args.command, cwd=REPO).returncode
        finally:
            wall = time.monotonic() - start
            subprocess.run(["accton", "off"], capture_output=True)
        rows = by_program(acct)
    total = sum(cpu for _, _, cpu in rows)
    cores = len(os.sched_getaffinity(0))
    print(f"{' '.join(args.command)}: exit {code}, {wall:.0f} s wall; {total:.0f} CPU s of the {wall * cores:.0f} its "
          f"{cores} cores could give ({total / (wall * cores):.0%}), in processes that ended while it ran")
    print(f"{'program':20s} {'processes':>9s} {'CPU s':>8s} {'share':>6s} {'CPU s each':>10s}")
    for name, calls, cpu in rows[:args.top]:
        print(f"{name:20s} {calls:9d} {cpu:8.1f} {cpu / total:6.1%} {cpu / calls:10.3f}")


if __name__ == "__main__":
    main()
