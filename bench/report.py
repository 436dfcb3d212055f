"""Run-report figures (issue: resources, retries and a run report), side by side in one run:

  - measuring what steps use (a cgroup parent per container, read after it ends) on the 3-trivial-steps workflow:
    itwin-run with measuring on / off (ITWIN_RUN_STATS=0), runs interleaved (goal <= 1.05)
  - `itwin-run report` for a 200-step run: seconds, and the page's size

Run: .venv/bin/python bench/report.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import chain, timed  # noqa: E402
from bench.core import WORKFLOW  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-report-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # as root, steps run unprivileged: the project must be readable
        (root / "bench-core").mkdir()
        (root / "bench-core" / "requirements.txt").write_text("# base only\n")
        (root / "bench-env").mkdir()
        (root / "bench-env" / "requirements.txt").write_text("# base only\n")
        (root / "three.yml").write_text(WORKFLOW)
        timed(["build", "three.yml"], root)
        off = {**os.environ, "ITWIN_RUN_STATS": "0"}
        times: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.repeat):
            times["on"].append(timed(["--force", "three.yml"], root))
            times["off"].append(timed(["--force", "three.yml"], root, off))
        (root / "chain200.yml").write_text(chain(200))
        timed(["chain200.yml"], root)
        report = []
        for _ in range(3):
            start = time.perf_counter()
            timed(["report", "-o", str(root / "report.html")], root)
            report.append(time.perf_counter() - start)
        size = (root / "report.html").stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"3 trivial steps, median of {args.repeat}: measuring on {med['on']:.3f} s, off {med['off']:.3f} s, "
          f"on / off = {med['on'] / med['off']:.3f}  (goal <= 1.05)")
    print(f"report of a 200-step run: {statistics.median(report):.2f} s (median of 3, the whole command), "
          f"{size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
