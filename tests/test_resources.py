"""resources: and retries: against the real engines (Docker, Apptainer) and SLURM: limits are enforced and named,
what a step used is measured, a flaky step is run again."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import itwin

pytestmark = pytest.mark.docker

SPIN = """import multiprocessing, resource, time


def spin():
    t = time.time()
    while time.time() - t < 2:
        pass


if __name__ == "__main__":
    ps = [multiprocessing.Process(target=spin) for _ in range(2)]
    [p.start() for p in ps]
    [p.join() for p in ps]
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print("cpu seen inside", sum(u.ru_utime + u.ru_stime for u in used))
"""
FLAKY = """import argparse, pathlib, sys
ap = argparse.ArgumentParser()
ap.add_argument("--output")
count = pathlib.Path(ap.parse_args().output, "count")
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
print(f"attempt {n}")
sys.exit(0 if n >= 3 else 1)
"""
WORKFLOW = """
datasets:
  spun: {location: ./data/spun}
  free: {location: ./data/free}
steps:
  - hog:
      command: python -c "x = bytearray(300 * 2**20); print(len(x))"
      env: {file: req.txt}
      resources: {memory: 100M}
  - slow:
      command: python -c "import time; time.sleep(30)"
      env: {file: req.txt}
      resources: {time: 2s}
  - busy:
      output: spun
      command: python spin.py
      env: {file: req.txt}
      resources: {cpus: 1}
      allow_empty_output: true  # it only prints
  - unlimited:
      output: free
      command: python spin.py
      env: {file: req.txt}
      allow_empty_output: true
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)  # as root, steps run as nobody: the project must be readable
    (tmp_path / "req.txt").write_text("# the base image only\n")
    (tmp_path / "spin.py").write_text(SPIN)
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "wf.yml").write_text(WORKFLOW)
    return tmp_path


def manifest(project: Path) -> dict:
    runs = sorted((project / ".itwin-run" / "runs").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


@pytest.mark.parametrize("engine", ["docker", "apptainer"])
def test_limits_are_enforced_named_and_measured(project, engine, docker_client, apptainer_env, no_leftovers):
    res = itwin("--engine", engine, "--keep-going", "wf.yml", cwd=project,
                env=apptainer_env if engine == "apptainer" else None)
    assert res.returncode != 0
    assert "step 'hog' killed: out of memory (limit 100M)" in res.stderr, res.stderr[-3000:]
    assert "step 'slow' killed: time limit (2s)" in res.stderr
    steps = manifest(project)["steps"]
    assert steps["hog"]["status"] == "failed" and steps["hog"]["usage"]["killed"] == "out of memory (limit 100M)"
    assert steps["hog"]["limits"] == {"memory": "100M"}
    slow = steps["slow"]
    assert slow["status"] == "failed" and slow["usage"]["killed"] == "time limit (2s)", slow  # the timer stopped it
    for name in ("busy", "unlimited"):
        used = steps[name]["usage"]
        assert steps[name]["status"] == "done" and {"wall_s", "cpu_s", "peak_memory"} <= used.keys(), used
    busy, free = steps["busy"]["usage"], steps["unlimited"]["usage"]
    assert busy["cpu_s"] / busy["wall_s"] <= 1.15, busy  # two spinning processes held to one CPU
    assert steps["busy"]["limits"] == {"cpus": 1.0}
    for name, used in (("busy", busy), ("unlimited", free)):  # what the engine measured is what the step used
        inside = float(re.search(rf"{name} \| cpu seen inside ([\d.]+)", res.stdout).group(1))
        assert 0.9 * inside <= used["cpu_s"] <= 1.2 * inside + 0.3, (name, used, inside)
    shown = itwin("show", manifest(project)["run_id"][:12], cwd=project)
    assert json.loads(shown.stdout)["steps"]["busy"]["usage"] == busy


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: two processes cannot use two")
@pytest.mark.alone
@pytest.mark.idle  # two CPUs of their own
def test_without_a_cpu_limit_two_processes_use_two_cpus(project, docker_client, no_leftovers):
    res = itwin("--only", "unlimited", "wf.yml", cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    free = manifest(project)["steps"]["unlimited"]["usage"]
    assert free["cpu_s"] / free["wall_s"] >= 1.3, free


def test_a_flaky_step_is_retried_and_every_attempt_kept(project, docker_client, no_leftovers):
    (project / "wf.yml").write_text("datasets:\n  out: {location: ./data/out}\nsteps:\n"
                                    "  - flaky: {output: out, command: python flaky.py, env: {file: req.txt}, "
                                    "retries: 2}\n")
    res = itwin("wf.yml", cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("running it again") == 2
    m = manifest(project)
    attempts = m["steps"]["flaky"]["attempts"]
    assert [(a["status"], a["exit_code"]) for a in attempts] == [("failed", 1), ("failed", 1), ("done", 0)]
    run_dir = project / ".itwin-run" / "runs" / m["run_id"]
    assert (run_dir / "flaky.attempt1.log").read_text() == "attempt 1\n"
    assert (run_dir / "flaky.attempt2.log").read_text() == "attempt 2\n"
    assert (run_dir / "flaky.log").read_text() == "attempt 3\n"
    assert m["steps"]["flaky"]["status"] == "done" and "up to date" in itwin("wf.yml", cwd=project).stderr


def test_slurm_jobs_get_the_resources(project, slurm_env, docker_client, no_leftovers):
    wf = ("datasets:\n  out: {location: ./data/out}\nsteps:\n  - sized: {output: out, command: python -c pass, "
          "env: {file: req.txt}, resources: {cpus: 1, memory: 200M, time: 90s}}\n")
    (project / "wf.yml").write_text(wf)
    res = itwin("--executor", "slurm", "--engine", "docker", "wf.yml", cwd=project, env=slurm_env)
    # #32: the step wrote nothing: failed, and the job wrote no record of it (Snakemake's missing outputs)
    assert res.returncode == 1 and "step 'sized' exited 0 but wrote nothing into its output dataset 'out'" in \
        res.stderr, res.stderr[-3000:]
    assert not (project / ".itwin-run" / "steps" / "wf.yml" / "sized.json").exists()
    (project / "wf.yml").write_text(wf.replace("time: 90s}", "time: 90s}, allow_empty_output: true"))
    res = itwin("--executor", "slurm", "--engine", "docker", "wf.yml", cwd=project, env=slurm_env)
    assert res.returncode == 0, res.stderr[-3000:]
    job = re.search(r"submitted sized as job (\d+)", res.stderr).group(1)
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                           env={**os.environ, **slurm_env}).stdout
    assert "NumCPUs=1" in shown and "MinMemoryNode=200M" in shown and "TimeLimit=00:02:00" in shown, shown
    assert {"wall_s", "cpu_s"} <= manifest(project)["steps"]["sized"]["usage"].keys()
