"""Install figures, one run (issue: a tool people install):

  - time from an empty folder to a finished first run of `itwin-run init`'s project, images cold (the scaffold's
    step images removed; the base image kept) and warm (report both)
  - `itwin-run --help` start-up: the installed wheel (a fresh venv outside the checkout) / the editable install
    (goal <= 1: the installed one must not be slower)
  - the same first run for `init --template ml` (a data step, an itwinai training step), cold and warm

The cold runs remove the scaffold's step images; Docker's build cache stays (a machine that ran the MNIST use case
has the training image's dependency install there).

Run: .venv/bin/python bench/install.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, REPO  # noqa: E402
from tests.services import fresh_venv  # noqa: E402


def seconds(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-install-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                        "-w", str(work / "dist")], check=True, capture_output=True)
        fresh_venv(work / "venv", next((work / "dist").glob("*.whl")))
        installed = str(work / "venv/bin/itwin-run")
        first: dict[str, float] = {}
        templates = {"basic": ("generate", "stats"), "ml": ("data", "train")}
        for template, images in templates.items():
            extra = ["--template", "ml", "--itwinai", str(REPO / "itwinai")] if template == "ml" else []
            for kind in ("cold", "warm"):
                if kind == "cold":
                    for image in [i for name in images for i in client.images.list(name=f"itwin-run/{name}")]:
                        for tag in image.tags:
                            client.images.remove(tag, force=True)
                project = work / f"{template}-{kind}"
                start = time.perf_counter()
                subprocess.run([installed, "init", str(project), *extra], check=True, capture_output=True)
                subprocess.run([installed, "workflow.yml"], cwd=project, check=True, capture_output=True)
                first[f"{template} {kind}"] = time.perf_counter() - start
        help_times: dict[str, list[float]] = {"installed": [], "editable": []}
        for _ in range(args.repeat):
            help_times["installed"].append(seconds([installed, "--help"], work))
            help_times["editable"].append(seconds([ITWIN, "--help"], work))
    for template in templates:
        print(f"empty folder -> finished first run of the {template} scaffold: cold {first[f'{template} cold']:.1f} s, "
              f"warm {first[f'{template} warm']:.1f} s")
    med = {k: statistics.median(v) for k, v in help_times.items()}
    print(f"`itwin-run --help`, median of {args.repeat}: installed {med['installed']:.3f} s, editable "
          f"{med['editable']:.3f} s, installed / editable = {med['installed'] / med['editable']:.2f}  (goal <= 1)")


if __name__ == "__main__":
    main()
