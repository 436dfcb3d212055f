"""Where a command's CPU goes, by program: `make test` by default (the suite is CPU-bound on 2 cores, so its wall time
falls only with the CPU its tests spend). Every process that ends while it runs is counted, those in containers
too, through the kernel's process accounting (`accton`, `dump-acct`: Debian's acct package; root).

Prints the wall time, the CPU seconds against what the cores could have given, and the programs that spent the most.

--tests MARKEXPR: which tests spend it. The tests of that pytest marker expression run one at a time (no xdist), so
the machine's busy CPU between a test's start and its end (/proc/stat: every process, the daemons and the kernel
too) is that test's; printed with the Docker daemons' own share (dockerd and containerd, which process accounting
misses: they never end) and totalled by test module. Any user may run this mode.

Run as root: .venv/bin/python bench/suite_cpu.py [--top N] [-- COMMAND ...]
         or: .venv/bin/python bench/suite_cpu.py --tests "docker and not alone" [--top N] [-- PYTEST ARGS ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUT = "ITWIN_SUITE_CPU_OUT"  # where this module, loaded into pytest (-p bench.suite_cpu), writes a line a test
TICKS = os.sysconf("SC_CLK_TCK")
DAEMONS = ("dockerd", "containerd")


def busy_s() -> float:
    """The machine's busy CPU seconds since boot: /proc/stat's first line, all but idle and iowait."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def daemons_s() -> float:
    """CPU seconds the Docker daemons (DAEMONS) have spent so far."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() in DAEMONS:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        except OSError:  # gone meanwhile
            continue
    return total


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With OUT set: the test's setup, call and teardown, measured as one."""
    out = os.environ.get(OUT)
    busy, daemons, start = busy_s(), daemons_s(), time.monotonic()
    result = yield
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps({"test": item.nodeid, "cpu": busy_s() - busy, "daemons": daemons_s() - daemons,
                                 "wall": time.monotonic() - start}) + "\n")
    return result


def by_test(markexpr: str, pytest_args: list[str], top: int) -> int:
    """Run the tests of `markexpr` one at a time and print which spent the machine's CPU."""
    with tempfile.TemporaryDirectory(prefix="itwin-cpu-") as tmp:
        out = Path(tmp) / "tests.jsonl"
        out.touch()
        start = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "bench.suite_cpu",
                               "-m", markexpr, *pytest_args, "tests"], cwd=REPO,
                              env={**os.environ, OUT: str(out), "PYTHONPATH": str(REPO)}).returncode
        wall = time.monotonic() - start
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    total = sum(r["cpu"] for r in rows)
    if not rows or total <= 0:
        print(f"no test of {markexpr!r} ran (exit {code})")
        return code or 1
    cores = len(os.sched_getaffinity(0))
    print(f"{len(rows)} tests ({markexpr}), one at a time: exit {code}, {wall:.0f} s wall; {total:.0f} CPU s of the "
          f"machine, {sum(r['daemons'] for r in rows):.0f} of them the daemons' ({', '.join(DAEMONS)}). On {cores} "
          f"cores that is {total / cores:.0f} s at the least.")
    print(f"{'CPU s':>7s} {'share':>6s} {'daemons':>7s} {'wall s':>7s}  test")
    for r in sorted(rows, key=lambda r: -r["cpu"])[:top]:
        print(f"{r['cpu']:7.1f} {r['cpu'] / total:6.1%} {r['daemons']:7.1f} {r['wall']:7.1f}  {r['test']}")
    modules: Counter[str] = Counter()
    for r in rows:
        modules[r["test"].split("::")[0]] += r["cpu"]
    print(f"{'CPU s':>7s} {'share':>6s}  module")
    for name, cpu in modules.most_common():
        print(f"{cpu:7.1f} {cpu / total:6.1%}  {name}")
    return code


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
    ap.add_argument("--top", type=int, default=20, help="programs (or tests) to list")
    ap.add_argument("--tests", metavar="MARKEXPR", help="which tests spend the CPU (one at a time; COMMAND: pytest's "
                                                         "arguments)")
    ap.add_argument("command", nargs="*")
    args = ap.parse_args()
    if args.tests:
        if any(a.startswith(("-n", "--numprocesses")) for a in args.command):
            sys.exit("suite_cpu: --tests runs one test at a time: no -n")
        sys.exit(by_test(args.tests, args.command, args.top))
    args.command = args.command or ["make", "test"]
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
