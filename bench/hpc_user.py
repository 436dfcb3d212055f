"""On the HPC node as its user, one run (issue: non-root Apptainer and SLURM): a `useradd` user with itwin-run from
its wheel in a venv of their own, no Docker socket, Apptainer unprivileged (../shared/hpc/apptainer --users) and the
lab's SLURM (../shared/hpc/slurm).

  - MNIST training, then serving (inference), end to end as the user, through SLURM and Apptainer, its images
    from pin files that root pushed with `build --push --engine apptainer` (SIFs as oras:// artifacts), the engine,
    executor and cache from a site profile: whether it passes, whose its outputs are, and the conversions on the
    user's side (`apptainer build` calls counted by a wrapper first on the user's PATH; goal 0);
  - SLURM per-step latency as the user against as root: 10 chained trivial steps from one SIF cache, alternating
    rounds, medians (goal: within 10%).

Needs a Docker daemon (root's side), root, and the labs above. Run: .venv/bin/python bench/hpc_user.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import ITWIN, chain, mnist  # noqa: E402
from tests.services import make_user, registry  # noqa: E402

SHARED = REPO.parent / "shared"
LAB = Path("/tmp/applab/bin")
WORKFLOW = "use-cases/mnist/training-workflow.yml"
STEPS = 10
SERVING = "use-cases/mnist/inference-workflow.yml"


def labs() -> dict[str, str]:
    """Apptainer for non-root users and a running SLURM; the environment SLURM's commands need."""
    deb = SHARED / "hpc" / "apptainer" / "apptainer_1.4.5-2_amd64.deb"
    subprocess.run(["bash", str(SHARED / "hpc" / "apptainer" / "setup-apptainer.sh"), "--quiet", "--users"], check=True,
                   env={**os.environ, "APPLAB_APPTAINER_DEB": str(deb)}, capture_output=True)
    subprocess.run(["bash", str(SHARED / "hpc" / "slurm" / "start-slurm.sh")], check=True, capture_output=True)
    return {} if Path("/etc/slurm/slurm.conf").exists() else {"SLURM_CONF": "/tmp/slurmlab/etc/slurm.conf"}


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return time.perf_counter() - start


def serving(user, tmp: Path, root_env: dict[str, str], slurm: dict[str, str]) -> None:
    """MNIST: root pushes the images and their SIFs; the user trains and serves from the pins, converting nothing."""
    uid = pwd.getpwnam(user.name).pw_uid
    site = mnist(tmp / "site")
    (site / "data" / "mnist" / "raw").mkdir(parents=True)
    for f in (SHARED / "data" / "mnist").glob("*.gz"):
        shutil.copy(f, site / "data" / "mnist" / "raw")
    wf = site / WORKFLOW
    wf.write_text(wf.read_text().replace("config: ./use-cases/mnist/mnist-ai.yml",
                                         "config: ./use-cases/mnist/mnist-ai.yml\n        max-epochs: 1"))
    (tmp / "registry").mkdir()
    with registry(tmp / "registry") as addr:
        for each in (WORKFLOW, SERVING):
            timed([ITWIN, "build", "--engine", "apptainer", "--push", "--registry", f"{addr}/bench", each], site,
                  {**root_env, "ITWIN_RUN_SIF_CACHE": str(tmp / "site-sif")})
        project = user.project(site, "bench-mnist")  # the workflow, its configs and the pin files
        shutil.copytree(site / "data" / "mnist" / "raw", project / "data" / "mnist" / "raw")
        counted = user.home / "bin"
        counted.mkdir(exist_ok=True)
        log = user.home / "conversions.log"
        log.unlink(missing_ok=True)
        (counted / "apptainer").write_text(f'#!/bin/sh\n[ "$1" = build ] && echo "$*" >> {log}\n'
                                           f'exec {LAB}/apptainer "$@"\n')
        (counted / "apptainer").chmod(0o755)
        sites = user.home / ".config" / "itwin-run" / "sites"
        sites.mkdir(parents=True, exist_ok=True)
        (sites / "bench.yml").write_text(f"engine: apptainer\nexecutor: slurm\nenvironment: {{ITWIN_RUN_SIF_CACHE: "
                                         f"{user.home}/.cache/itwin-run/bench-sif}}\n")
        subprocess.run(["chown", "-R", f"{user.name}:{user.name}", str(counted), str(user.home / ".config"),
                        str(project / "data")], check=True)
        shutil.rmtree(user.home / ".cache" / "itwin-run" / "bench-sif", ignore_errors=True)
        env = {"PATH": f"{counted}:{user.bin}:/usr/bin:/bin", **slurm}
        start = time.perf_counter()
        res = user.itwin("--site", "bench", "--images", WORKFLOW.replace(".yml", ".images.json"), WORKFLOW,
                         cwd=project, env=env, timeout=1800)
        took = time.perf_counter() - start
        served = user.itwin("--site", "bench", "--images", SERVING.replace(".yml", ".images.json"), SERVING,
                            cwd=project, env=env, timeout=1800)
    predictions = sorted(p.name for p in (project / "data" / "mnist" / "ml-predictions").glob("*"))
    outputs = {p.stat().st_uid for p in (project / "data" / "mnist").rglob("*")}
    conversions = len(log.read_text().splitlines()) if log.exists() else 0
    print(f"MNIST training (1 epoch) as {user.name}, SLURM + Apptainer, images from the pin file: "
          f"{'passed' if res.returncode == 0 else 'FAILED: ' + res.stderr[-500:]} in {took:.1f} s; pulled "
          f"{res.stderr.count('pulled ')} files; outputs owned by {'the user' if outputs == {uid} else outputs}; "
          f"conversions on the user's side: {conversions}")
    print("then served (the inference workflow, same way): " + (f"passed, predictions {predictions}" if
          served.returncode == 0 else f"FAILED: {served.stderr[-500:]}"))


def latency(rounds: int, user, tmp: Path, root_env: dict[str, str], slurm: dict[str, str], cache: Path) -> None:
    """SLURM per-step latency: a chain of trivial steps from one SIF cache, root and the user alternating."""
    mine = tmp / "root-chain"
    (mine / "bench-env").mkdir(parents=True)
    (mine / "bench-env" / "requirements.txt").write_text("# the base image only\n")
    (mine / "workflow.yml").write_text(chain(STEPS))
    root_env = {**root_env, "ITWIN_RUN_WHEELHOUSE": "none"}
    timed([ITWIN, "build", "--engine", "apptainer", "workflow.yml"], mine, root_env)
    theirs = user.project(mine, "bench-chain")
    user_env = {"PATH": f"{LAB}:{user.bin}:/usr/bin:/bin", "ITWIN_RUN_SIF_CACHE": str(cache),
                "ITWIN_RUN_WHEELHOUSE": "none", **slurm}
    argv = ["--executor", "slurm", "--engine", "apptainer", "--force", "workflow.yml"]
    as_root, as_user = [], []
    for _ in range(rounds):
        as_root.append(timed([ITWIN, *argv], mine, root_env))
        start = time.perf_counter()
        res = user.itwin(*argv, cwd=theirs, env=user_env)
        assert res.returncode == 0, res.stderr[-3000:]
        as_user.append(time.perf_counter() - start)
    r, u = statistics.median(as_root), statistics.median(as_user)
    print(f"{STEPS} chained trivial steps through SLURM, median of {rounds}: as root {r:.2f} s ({r / STEPS:.2f} s a "
          f"step), as the user {u:.2f} s ({u / STEPS:.2f} s a step); user / root = {u / r:.2f} (goal within 10%)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-mnist", action="store_true")
    args = ap.parse_args()
    slurm = labs()
    tmp = Path(tempfile.mkdtemp(prefix="itwin-bench-hpc-user-", dir="/tmp"))
    tmp.chmod(0o755)
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                        "-w", str(tmp / "dist")], check=True, capture_output=True)
        user = make_user("itwinuser", next((tmp / "dist").glob("*.whl")))
        cache = tmp / "sif"  # the site's SIF cache: root fills it, everyone reads it
        root_env = {**os.environ, **slurm, "PATH": f"{LAB}:{os.environ['PATH']}", "ITWIN_RUN_SIF_CACHE": str(cache)}
        if not args.skip_mnist:
            serving(user, tmp, root_env, slurm)
        latency(args.rounds, user, tmp, root_env, slurm, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
