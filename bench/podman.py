"""Podman engine figures, side by side in one run, as a non-root user (made here, as the tests make theirs: useradd,
the wheel in ~/venv, rootless Podman on the kernel's overlay, the base image loaded from Docker's):

  - 3 trivial chained steps: itwin-run --engine podman / the same three raw `podman run --rm` (both as the user,
    each round one `runuser` call), and / itwin-run with Docker (as root: no runuser); alternating rounds, medians
  - how a step starts: the Podman service's start, and one step's `podman run` against its create+start over the API

Run as root: .venv/bin/python bench/podman.py [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, REPO, chain  # noqa: E402
from tests.services import make_user, podman_base, rootless_podman  # noqa: E402

RAW = """set -e
for name in s0 s1 s2; do
  mkdir -p data/$name
  podman run --rm -v "$PWD:$PWD:ro" -v "$PWD/data/$name:$PWD/data/$name" -w "$PWD" IMAGE python -c pass \
    --output "$PWD/data/$name"
done
"""
API = """import time
from runner.engines import podman
from runner.engines.docker.client import client
t = time.perf_counter(); api = client(podman.service()).api; up = time.perf_counter() - t
t = time.perf_counter()
cid = api.create_container("IMAGE", command=["python", "-c", "pass"])["Id"]
api.start(cid); api.wait(cid); api.remove_container(cid, force=True)
print(up, time.perf_counter() - t)
"""


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    dist = Path("/tmp/itwin-bench-wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w",
                    str(dist)], check=True, capture_output=True)
    user = make_user("itwinbench", next(dist.glob("*.whl")))
    rootless_podman(user)
    podman_base(user, ITWIN)
    project = user.home / "chain"
    project.mkdir(exist_ok=True)
    (project / "bench-env").mkdir(exist_ok=True)
    (project / "bench-env" / "requirements.txt").write_text("# base only\n")
    (project / "workflow.yml").write_text(chain(3))
    subprocess.run(["chown", "-R", f"{user.name}:", str(project)], check=True)
    built = user.itwin("build", "--engine", "podman", "workflow.yml", cwd=project)
    assert built.returncode == 0, built.stderr[-2000:]
    image = built.stdout.split()[1]
    (project / "raw.sh").write_text(RAW.replace("IMAGE", image))
    (project / "api.py").write_text(API.replace("IMAGE", image))
    docker_project = Path("/tmp/itwin-bench-podman-docker")
    subprocess.run(["rm", "-rf", str(docker_project)], check=True)
    docker_project.mkdir(mode=0o755)
    (docker_project / "bench-env").mkdir()
    (docker_project / "bench-env" / "requirements.txt").write_text("# base only\n")
    (docker_project / "workflow.yml").write_text(chain(3))
    subprocess.run([ITWIN, "build", "workflow.yml"], cwd=docker_project, check=True, capture_output=True)

    as_user = ["runuser", "-u", user.name, "--", "env", f"HOME={user.home}", f"PATH={user.bin}:/usr/bin:/bin"]
    results: dict[str, list[float]] = {"raw podman run x3": [], "itwin-run podman": [], "itwin-run docker": []}
    try:
        for _ in range(args.rounds):
            results["raw podman run x3"].append(timed([*as_user, "bash", "raw.sh"], project))
            results["itwin-run podman"].append(timed([*as_user, "itwin-run", "--engine", "podman", "--force",
                                                      "workflow.yml"], project))
            results["itwin-run docker"].append(timed([ITWIN, "--force", "workflow.yml"], docker_project))
        starts = [subprocess.run([*as_user, str(user.bin / "python"), "api.py"], cwd=project, check=True,
                                 capture_output=True, text=True).stdout.split() for _ in range(5)]
        one_raw = [timed([*as_user, "podman", "run", "--rm", image, "python", "-c", "pass"], project)
                   for _ in range(5)]
    finally:  # what this bench made outside the user's home
        shutil.rmtree(docker_project, ignore_errors=True)
        shutil.rmtree(dist, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"3 trivial chained steps as a non-root user, median of {args.rounds} alternating rounds (seconds):")
    for k, v in med.items():
        print(f"  {k:20s} {v:.3f}   runs: {' '.join(f'{x:.2f}' for x in results[k])}")
    print(f"itwin-run podman / raw podman run x3 = {med['itwin-run podman'] / med['raw podman run x3']:.2f}")
    print(f"itwin-run podman / itwin-run docker  = {med['itwin-run podman'] / med['itwin-run docker']:.2f}")
    print(f"one step: `podman run --rm` {statistics.median(one_raw):.3f} s (with runuser); over the API, create + "
          f"start + wait + remove {statistics.median(float(s[1]) for s in starts):.3f} s; the service's start "
          f"{statistics.median(float(s[0]) for s in starts):.3f} s once per run")


if __name__ == "__main__":
    main()
