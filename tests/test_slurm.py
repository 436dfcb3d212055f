"""The SLURM executor against a real one-node SLURM (../shared/hpc/slurm): dependencies, failures, resume, cancel,
and DDP training over two srun tasks."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ITWIN_RUN, REPO, SHARED, itwin, run_ids
from tests.services import wait_for

pytestmark = pytest.mark.docker


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def slurm(*args: str, cwd: Path, env: dict[str, str]):
    return itwin("--executor", "slurm", "--engine", "apptainer", *args, cwd=cwd, env=env)


def test_dry_run_prints_the_batch_scripts(toy, slurm_env):
    res = slurm("--dry-run", "workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("#!/bin/bash") == 3 and "#SBATCH --job-name=itwin-square" in res.stdout
    assert "#SBATCH --dependency=afterok:<generate>" in res.stdout and "#SBATCH --kill-on-invalid-dep=yes" in res.stdout
    assert "-m runner.stepjob" in res.stdout
    assert not (toy / ".itwin-run" / "runs").exists() or not list((toy / ".itwin-run" / "runs").iterdir())


def test_toy_workflow_under_slurm_matches_local(toy, slurm_env, docker_client, no_leftovers):
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    want = outputs(toy / "data")
    shutil.rmtree(toy / "data")
    shutil.rmtree(toy / ".itwin-run")
    res = slurm("workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert outputs(toy / "data") == want
    assert "submitted square as job" in res.stderr and "(after " in res.stderr
    assert "summarize | sum=55" in res.stdout
    for step in ("generate", "square", "summarize"):
        assert f"{step}: COMPLETED" in res.stderr
    again = slurm("workflow.yml", cwd=toy, env=slurm_env)  # resume: nothing is resubmitted
    assert again.returncode == 0 and "submitted" not in again.stderr and again.stderr.count(": up to date") == 3


def test_images_are_made_before_the_first_sbatch_and_no_job_converts(toy, slurm_env, tmp_path):
    """#25: the session converts the SIFs before it submits anything, so a batch job only runs its step (a compute
    node may have no Docker, no network, no room to unpack an image): every `apptainer build` comes from outside any
    job, and every job's `apptainer exec` from inside one."""
    log = tmp_path / "apptainer.log"
    wrapper = tmp_path / "bin" / "apptainer"
    wrapper.parent.mkdir()
    real = shutil.which("apptainer", path=slurm_env["PATH"])
    wrapper.write_text(f'#!/bin/sh\necho "job=${{SLURM_JOB_ID:-none}} $*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = {**slurm_env, "PATH": f"{wrapper.parent}:{slurm_env['PATH']}", "ITWIN_RUN_SIF_CACHE": str(tmp_path / "sif")}
    res = slurm("workflow.yml", cwd=toy, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    calls = [line.split()[:3] for line in log.read_text().splitlines()]
    making = [job for job, *args in calls if "exec" not in args]  # `build` and `sif`, or itwin-run's own conversion
    runs = [job for job, *args in calls if "exec" in args]
    assert making and set(making) == {"job=none"} and len(runs) == 3 and "job=none" not in runs, calls
    assert len(list((tmp_path / "sif").glob("*.sif"))) == 3


def test_a_job_on_a_node_that_cannot_see_its_sif_says_so_in_one_line(toy, apptainer_env, tmp_path):
    """#25: what a batch job runs (runner.stepjob) on a compute node without the shared SIF cache: one line naming
    the file and the fix, and its exit code and reason written for the session; no traceback."""
    from runner.engines.base import Job

    gone = tmp_path / "not-mounted-here" / "step.sif"
    job = Job(step="generate", image=f"{gone}", argv=["true"], workdir=toy, mounts=[], env={},
              user=f"{os.getuid()}:{os.getgid()}")
    spec = tmp_path / "generate.job.json"
    spec.write_text(json.dumps({"engine": "apptainer", "run_id": "r", "root": str(toy), "key": "workflow.yml/generate",
                                "output": str(tmp_path / "out"), "parts": {}, "inputs": {}, "job": job.to_dict(),
                                "exit_file": str(tmp_path / "generate.exit")}))
    res = subprocess.run([sys.executable, "-m", "runner.stepjob", str(spec)], cwd=REPO,
                         env={**os.environ, **apptainer_env}, capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode == 3 and "Traceback" not in out, out
    assert out.splitlines() == [f"error: step 'generate': cannot read {gone} on {os.uname().nodename}: its SIF cache "
                                "must be on a filesystem every node mounts at the same path (ITWIN_RUN_SIF_CACHE), or "
                                "the SIFs loaded on this node (`itwin-run load`)"], out
    assert (tmp_path / "generate.exit").read_text() == "3\n"
    assert json.loads((tmp_path / "generate.usage.json").read_text())["reason"] == out.splitlines()[0][7:]


def test_failure_cancels_dependents_and_resume_resubmits_only_what_is_needed(toy, slurm_env):
    square = toy / "steps" / "square.py"
    good = square.read_text()
    square.write_text("import sys\nprint('about to fail')\nsys.exit(7)\n")
    res = slurm("workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "generate: COMPLETED" in res.stderr and "square: FAILED" in res.stderr
    assert "summarize: CANCELLED" in res.stderr
    assert "step 'square' failed with exit code 7" in res.stderr and "about to fail" in res.stderr
    square.write_text(good)
    res = slurm("workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "- generate: up to date" in res.stderr and "submitted generate" not in res.stderr
    assert "submitted square" in res.stderr and "submitted summarize" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_cancel_on_exit_leaves_no_container(toy, slurm_env, docker_client, sig):
    """Ctrl-C, or the runner killed outright (its watchdog scancels the jobs): no job or container is left."""
    (toy / "slow.yml").write_text(
        "datasets: {a: {location: ./data/a}}\nsteps:\n"
        "  - slow: {output: a, command: \"python -c \\\"import time; time.sleep(120)\\\"\", "
        "env: {file: ./envs/requirements.txt}}\n")
    proc = subprocess.Popen([*ITWIN_RUN, "--executor", "slurm", "--cancel-on-exit", "slow.yml"], cwd=toy,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **slurm_env})
    runs = wait_for(lambda: run_ids(toy), tries=300)
    assert runs, "the run never began"
    slow = {"label": [f"org.itwin-run.run={runs[0]}", "org.itwin-run.step=slow"]}  # (other tests run too)
    for _ in range(300):
        if docker_client.containers.list(ignore_removed=True, filters=slow):
            break
        time.sleep(0.1)
    assert docker_client.containers.list(ignore_removed=True, filters=slow), "the step never started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "cancelled jobs" in err, err[-2000:]
    else:
        assert proc.returncode == -signal.SIGKILL  # no handler ran: the watchdog cancels the job
    job = re.search(r"submitted slow as job (\d+)", err).group(1)
    for _ in range(100):
        queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                                env={**os.environ, **slurm_env}).stdout.strip()
        if queued in ("", "CANCELLED", "COMPLETED"):
            break
        time.sleep(0.1)
    assert queued in ("", "CANCELLED", "COMPLETED"), queued  # not RUNNING: the job was cancelled
    for _ in range(150):
        if not docker_client.containers.list(ignore_removed=True, all=True, filters=slow):
            break
        time.sleep(0.1)
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters=slow)


DDP_WORKFLOW = """
datasets:
  preproc-images: {location: ./data/mnist/preproc-images}
  ml-logs: {location: ./data/mnist/ml-logs}
steps:
  - preprocessing:
      output: preproc-images
      command: python ./use-cases/mnist/mnist-preproc.py
      env: {file: ./use-cases/mnist/preproc-env.yml}
      params: {source: ./data/mnist/raw}
  - ml-training:
      input: preproc-images
      output: ml-logs
      command: itwinai train
      env: {file: ./itwinai/env.yml, source: ./itwinai}
      params: {config: ./use-cases/mnist/mnist-ai.yml, train-config: ./ddp-training.yml, max-epochs: 1}
      slurm: {nodes: 1, ntasks_per_node: 2}
"""


@pytest.mark.slow
def test_ddp_training_over_two_srun_tasks(tmp_path, slurm_env):
    from mlflow.tracking import MlflowClient

    from tests.test_mnist import wheelhouse

    root = tmp_path / "ddp"
    shutil.copytree(REPO / "use-cases" / "mnist", root / "use-cases" / "mnist")
    shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    (root / "data" / "mnist" / "raw").mkdir(parents=True)
    for f in (SHARED / "data" / "mnist").glob("*.gz"):
        shutil.copy(f, root / "data" / "mnist" / "raw")
    conf = (root / "use-cases" / "mnist" / "pl-training.yml").read_text()
    conf = conf.replace("  accelerator: auto\n  devices: auto\n", "  accelerator: cpu\n  devices: 2\n  strategy: ddp\n")
    (root / "ddp-training.yml").write_text(conf.replace("num_workers: 2", "num_workers: 0"))
    (root / "workflow.yml").write_text(DDP_WORKFLOW)
    res = slurm("workflow.yml", cwd=root, env={**slurm_env, "ITWIN_RUN_WHEELHOUSE": wheelhouse()})
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    assert "ml-training | itwinai: rank 0 of world size 2 trained" in res.stdout
    assert "ml-training | itwinai: rank 1 of world size 2 trained" in res.stdout
    client = MlflowClient(f"sqlite:///{root}/data/mnist/ml-logs/mlflow.db")
    exp = client.get_experiment_by_name("MNIST classification lite")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 alone logs
    metrics = runs[0].data.metrics
    assert 0.5 < metrics["test_acc"] <= 1.0, metrics  # 10 classes: a guess gets about 0.1
    assert metrics["train_samples"] == 8000, metrics  # both ranks' samples, 4000 each: one epoch, not rank 0's twice
    assert json.loads((root / "data/mnist/preproc-images/meta.json").read_text())["counts"]["train"] == 8000
    (manifest,) = (root / ".itwin-run" / "runs").glob("*/manifest.json")
    image = json.loads(manifest.read_text())["steps"]["ml-training"]["image"]
    assert image.endswith(".sqfs") and ".sif::" in image  # the jobs ran the dependency SIF with the source overlay


def test_detach_then_status(toy, slurm_env):
    res = slurm("--detach", "workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0 and "submitted summarize as job" in res.stderr
    run_id = res.stderr.split("itwin-run status ")[1].split("`")[0]
    again = slurm("workflow.yml", cwd=toy, env=slurm_env)  # its jobs are in flight: refused, nothing submitted
    assert again.returncode == 3 and "submitted" not in again.stderr, again.stderr[-2000:]
    assert [ln for ln in again.stderr.splitlines() if not ln.startswith("note:")] == [
        f"error: run {run_id} (detached) still has jobs queued or running on {toy}: follow it with `itwin-run status "
        f"{run_id}`, or scancel its jobs, and run again once they end"], again.stderr
    for _ in range(300):
        st = itwin("status", run_id, cwd=toy, env=slurm_env)
        rows = [line.split("\t") for line in st.stdout.splitlines()]
        if rows and all(r[2] == "COMPLETED" for r in rows):
            break
        time.sleep(0.2)
    assert [r[0] for r in rows] == ["generate", "square", "summarize"] and all(r[2] == "COMPLETED" for r in rows)
    assert (toy / "data" / "summary" / "summary.txt").read_text().startswith("sum=55")
    (row,) = [r for r in itwin("history", cwd=toy, env=slurm_env).stdout.splitlines() if r.startswith(run_id)]
    assert " succeeded " in row and "(3 done)" in row, row  # the record learnt how its jobs ended
    assert slurm("workflow.yml", cwd=toy, env=slurm_env).returncode == 0  # and the project is free again


def test_a_failed_submission_is_a_failed_run_in_history(toy, slurm_env):
    res = slurm("--partition", "nosuchpartition", "workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: sbatch --parsable failed:")
    row = itwin("history", cwd=toy).stdout.splitlines()[1]
    assert " failed " in row and "slurm" in row and "sbatch --parsable failed" in row
    run_id = row.split()[0]
    shown = itwin("show", run_id, cwd=toy)
    assert shown.returncode == 0 and '"status": "failed"' in shown.stdout


POINT = """import argparse, json, os
p = argparse.ArgumentParser()
p.add_argument("--input"); p.add_argument("--output"); p.add_argument("--x", type=float); p.add_argument("--y", type=float)
a = p.parse_args()
os.makedirs(a.output, exist_ok=True)
json.dump({"loss": (a.x - 2) ** 2 + a.y}, open(os.path.join(a.output, "metrics.json"), "w"))
"""


def with_sweep(toy: Path, x: str = "[1, 2, 3]") -> None:
    (toy / "steps" / "point.py").write_text(POINT)
    text = (REPO / "tests" / "toy" / "workflow.yml").read_text()
    text = text.replace("  - square:\n      input: raw\n", """  - fit:
      input: raw
      output: fits
      command: python ./steps/point.py
      env: {file: ./envs/requirements.txt}
      sweep:
        grid: {x: X, y: [0]}
        best: {metric: loss, mode: min}
        parallel: 2
  - square:
      input: raw
""").replace("datasets:\n", "datasets:\n  fits:\n    location: ./data/fits\n")
    text = text.replace("      input: squares\n      output: summary", "      input: [fits, squares]\n      output: summary")
    (toy / "workflow.yml").write_text(text.replace("{x: X,", "{x: " + x + ","))


def test_a_sweep_is_one_job_array_and_the_best_goes_on(toy, slurm_env):
    with_sweep(toy)
    res = slurm("workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr[-3000:]
    arrays = re.findall(r"submitted the 3 points of fit as job array (\d+) \(2 at a time\)", res.stderr)
    assert len(arrays) == 1 and "submitted fit." not in res.stderr, res.stderr[-3000:]  # one sbatch call
    run = next((toy / ".itwin-run" / "runs").glob("*/fit.sbatch"))
    assert "#SBATCH --array=0-2%2" in run.read_text()
    record = json.loads((run.parent / "manifest.json").read_text())
    assert sorted(record["steps"][f"fit.x-{x}_y-0"]["handle"] for x in (1, 2, 3)) == [f"{arrays[0]}_{i}" for i in range(3)]
    fits = toy / "data" / "fits"
    assert os.readlink(fits / "best") == "x-2_y-0"
    assert [json.loads((fits / f"x-{x}_y-0" / "metrics.json").read_text())["loss"] for x in (1, 2, 3)] == [1, 0, 1]
    assert json.loads((fits / "sweep.json").read_text())["best"] == "x-2_y-0"
    assert "summarize: COMPLETED" in res.stderr  # what reads the sweep ran after it
    again = slurm("workflow.yml", cwd=toy, env=slurm_env)
    assert again.returncode == 0 and "submitted" not in again.stderr


def test_a_detached_sweep_picks_its_best_in_a_job_after_its_array(toy, slurm_env):
    """Nobody stays to pick: the sweep's own step is a job after the array's tasks (afterany), what reads the sweep
    waits on it, and `status` and `history` learn how each ended. A failed point fails the pick and what reads it."""
    with_sweep(toy)
    res = slurm("--detach", "workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr[-3000:]
    (array,) = re.findall(r"submitted the 3 points of fit as job array (\d+)", res.stderr)
    pick = re.search(r"submitted fit as job (\d+) \(after ([^)]*)\)", res.stderr)
    assert pick and {f"{array}_{i}" for i in range(3)} <= set(pick.group(2).split(", ")), res.stderr[-3000:]
    assert re.search(rf"submitted summarize as job \d+ \(after .*{pick.group(1)}", res.stderr)
    run_id = res.stderr.split("itwin-run status ")[1].split("`")[0]
    script = (toy / ".itwin-run" / "runs" / run_id / "fit.sbatch").read_text()
    assert "#SBATCH --dependency=afterany:" in script and "--array" not in script
    rows = ended_rows(toy, run_id, slurm_env)
    assert {r[0]: r[2] for r in rows}["fit"] == "COMPLETED" and all(r[2] == "COMPLETED" for r in rows), rows
    fits = toy / "data" / "fits"
    assert os.readlink(fits / "best") == "x-2_y-0"
    assert "best: x-2_y-0 (loss 0, of 3 point(s))" in (toy / ".itwin-run" / "runs" / run_id / "fit.log").read_text()
    (row,) = [r for r in itwin("history", cwd=toy, env=slurm_env).stdout.splitlines() if r.startswith(run_id)]
    assert " succeeded " in row, row

    with_sweep(toy, "[1, 2, 3, bad]")  # the new point fails (not a number): the pick fails, summarize never runs
    res = slurm("--detach", "workflow.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "submitted the" not in res.stderr and "submitted fit.x-bad_y-0 as job" in res.stderr  # only the new point
    run_id = res.stderr.split("itwin-run status ")[1].split("`")[0]
    states = {r[0]: r[2] for r in ended_rows(toy, run_id, slurm_env)}
    assert states["fit.x-bad_y-0"] == "FAILED" and states["fit"] == "FAILED", states
    assert states["summarize"] != "COMPLETED", states
    log = (toy / ".itwin-run" / "runs" / run_id / "fit.log").read_text()
    assert "error: sweep fit: point(s) x-bad_y-0 failed" in log, log
    (row,) = [r for r in itwin("history", cwd=toy, env=slurm_env).stdout.splitlines() if r.startswith(run_id)]
    assert " failed " in row, row


def ended_rows(toy: Path, run_id: str, env: dict) -> list[list[str]]:
    """`status RUN` rows once every job has ended."""
    for _ in range(600):
        st = itwin("status", run_id, cwd=toy, env=env)
        rows = [line.split("\t") for line in st.stdout.splitlines()]
        if rows and not any(r[2] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "submitted") for r in rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end: {rows}")


def test_an_adaptive_sweep_is_a_job_array_a_wave(toy, slurm_env):
    """Optuna on the cluster: 4 trials, 2 a wave: each wave one job array, the second submitted once the first
    ended (its values asked with the first's loss told); the best of the four goes on."""
    (toy / "steps" / "point.py").write_text(POINT)
    (toy / "adaptive.yml").write_text("""
datasets:
  fits: {location: ./data/fits}
steps:
  - fit:
      input: null
      output: fits
      command: python ./steps/point.py
      env: {file: ./envs/requirements.txt}
      sweep:
        optuna: {trials: 4, seed: 0, space: {x: {uniform: [0, 4]}, y: {int: [0, 3]}}}
        best: {metric: loss, mode: min}
        parallel: 2
""")
    res = slurm("adaptive.yml", cwd=toy, env=slurm_env)
    assert res.returncode == 0, res.stderr[-3000:]
    arrays = re.findall(r"submitted the 2 points of fit as job array (\d+)", res.stderr)
    assert len(arrays) == 2, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    first_done = max(i for i, ln in enumerate(lines) if re.search(r"fit\.trial-[01]: COMPLETED", ln))
    second = next(i for i, ln in enumerate(lines) if f"job array {arrays[1]}" in ln)
    assert first_done < second, res.stderr[-3000:]
    table = json.loads((toy / "data" / "fits" / "sweep.json").read_text())
    assert table["best"] == min(table["points"], key=lambda r: r["loss"])["point"] and len(table["points"]) == 4
