"""`itwin-run doctor` and `itwin-run init` against the real daemon, Apptainer and SLURM, and with each one absent."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import itwin

pytestmark = pytest.mark.docker


def no(tool: str) -> str:
    """PATH without the folders that hold `tool`."""
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) + ["/tmp/applab/bin"]
                           if not os.path.exists(os.path.join(d, tool)))


def test_doctor_with_everything_here(tmp_path, docker_client, apptainer_env, slurm_env):
    res = itwin("doctor", "--engine", "apptainer", "--executor", "slurm", cwd=tmp_path, env=slurm_env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "ok   docker: daemon" in out and "ok   apptainer: apptainer version" in out
    assert "ok   slurm: controller:" in out and out.strip().endswith("usable")
    data = json.loads(itwin("doctor", "--json", cwd=tmp_path).stdout)
    assert data["usable"] is True and {c["area"] for c in data["checks"]} >= {"docker", "images"}


@pytest.mark.parametrize("case", ["docker", "apptainer", "slurm"])
def test_doctor_with_one_thing_missing(case, tmp_path, docker_client, slurm_env):
    if case == "docker":
        res = itwin("doctor", cwd=tmp_path, env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
        line = "FAIL docker: no Docker daemon answers at tcp://127.0.0.1:9 -> start dockerd"
    elif case == "apptainer":
        res = itwin("doctor", "--engine", "apptainer", cwd=tmp_path, env={"PATH": no("apptainer")})
        line = "FAIL apptainer: apptainer (or singularity) not on PATH -> load it"
    else:
        res = itwin("doctor", "--executor", "slurm", cwd=tmp_path, env={**slurm_env, "PATH": no("sinfo")})
        line = "FAIL slurm: sbatch, squeue, scontrol, scancel not on PATH -> load SLURM's client commands"
    assert res.returncode == 3, res.stdout + res.stderr
    assert any(ln.startswith(line) for ln in res.stdout.splitlines()), res.stdout
    assert "Traceback" not in res.stderr + res.stdout and res.stdout.strip().endswith("see the FAIL lines above")


def doctor_for_a_gpu_step(toy):
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace("command: python ./steps/square.py", "command: python ./steps/square.py\n"
                                                                             "      gpus: all"))
    return itwin("doctor", "workflow.yml", cwd=toy)


def test_doctor_needs_what_the_workflow_asks(toy, docker_client):
    if "nvidia" in docker_client.info().get("Runtimes", {}):
        pytest.skip("this daemon has the NVIDIA runtime: test_doctor_passes_a_gpu_step_on_a_gpu_host runs instead")
    res = doctor_for_a_gpu_step(toy)
    assert res.returncode == 3 and "FAIL docker: no NVIDIA runtime" in res.stdout


def test_doctor_passes_a_gpu_step_on_a_gpu_host(toy, docker_client):
    if "nvidia" not in docker_client.info().get("Runtimes", {}):
        pytest.skip("this daemon has no NVIDIA runtime (a CPU host): test_doctor_needs_what_the_workflow_asks runs")
    res = doctor_for_a_gpu_step(toy)
    assert res.returncode == 0 and "ok   docker: NVIDIA runtime present" in res.stdout, res.stdout


def test_init_runs_at_once_and_refuses_a_folder_that_holds_anything(tmp_path, docker_client, no_leftovers):
    res = itwin("init", "proj", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    project = tmp_path / "proj"
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        ".gitignore", "README.md", "envs/generate.txt", "envs/stats.txt", "sites/example.yml", "steps/generate.py",
        "steps/stats.py", "workflow.yml"]
    res = itwin("workflow.yml", cwd=project)
    assert res.returncode == 0, res.stderr
    assert (project / "data/summary/summary.txt").read_text() == "count=10\nsum=55\nmean=5.5\n"
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    again = itwin("init", "proj", cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert itwin("init", "other", cwd=tmp_path).returncode == 2
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["keep.txt"]
    shutil.rmtree(project / "data")


def test_an_unwritable_sif_cache_is_one_line_in_doctor_and_in_a_run(toy, apptainer_env, docker_client):
    """It was a traceback (the shim directory beside the cache could not be made)."""
    env = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": "/proc/itwin-no-cache"}
    res = itwin("doctor", "--engine", "apptainer", cwd=toy, env=env)
    assert res.returncode == 3 and "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    assert "FAIL apptainer: the SIF cache /proc/itwin-no-cache is not writable" in res.stdout, res.stdout
    res = itwin("--engine", "apptainer", "workflow.yml", cwd=toy, env=env)
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: the SIF cache /proc/itwin-no-cache is not writable"), res.stderr[-2000:]
