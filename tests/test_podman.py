"""`--engine podman`, for real: rootless Podman run by a non-root user (useradd) with itwin-run installed from its
wheel. The base image comes to that user the way a site without a registry gets it (Docker's archives, `itwin-run
load`); steps build with Podman's builder, write the user's own files, byte for byte what Docker writes; a runner
killed outright leaves neither a container nor a Podman service behind."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import TOY, itwin
from tests.services import change_packages, probe_wheelhouse, wait_for

pytestmark = pytest.mark.docker


def contents(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}


@pytest.fixture
def podman(podman_user, docker_client):
    return podman_user


def containers(user, *filters: str) -> list[str]:
    res = user.run(["podman", "ps", "-a", "-q", *[f"--filter=label={f}" for f in filters]])
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def services(user) -> list[str]:
    res = subprocess.run(["pgrep", "-u", user.name, "-f", "podman system service"], capture_output=True, text=True)
    return res.stdout.split()


def test_a_users_wheelhouse_reaches_podmans_build(podman, tmp_path):
    """--wheelhouse DIR with Podman's builder: the build (rootless, on the host's network for its time) installs
    from DIR, served on the loopback, a package no index has."""
    src = tmp_path / "src"
    src.mkdir()
    probe_wheelhouse(src, "rootless")
    project = podman.project(src, "wheelhouse")
    res = podman.itwin("--engine", "podman", "--wheelhouse", str(project / "wheelhouse"), "wf.yml", cwd=project)
    assert res.returncode == 0 and "say | probe rootless" in res.stdout, res.stderr[-3000:]


def test_a_user_runs_the_toy_with_podman_and_gets_dockers_bytes(podman, docker_client):
    project = podman.project(TOY, "toy")
    res = podman.itwin("--engine", "podman", "workflow.yml", cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "generated 5 numbers as uid 0" in res.stdout + res.stderr  # the container's root: the user outside
    data = project / "data"
    uid = pwd.getpwnam(podman.name).pw_uid
    assert {p.stat().st_uid for p in data.rglob("*")} == {uid}, "every output file is the user's"
    assert (data / "squares" / "input-check.txt").read_text() == "input read-only: Read-only file system\n"
    summary = (data / "summary" / "summary.txt").read_text()
    assert "sum=55\n" in summary and "greeting=hello\n" in summary and "host_env_leak=False" in summary, summary
    record = json.loads(next((project / ".itwin-run" / "runs").glob("*/manifest.json")).read_text())
    assert record["engine"] == "podman" and {s["status"] for s in record["steps"].values()} == {"done"}, record
    made = {e.removeprefix("docker.io/") for e in podman.run(
        ["podman", "images", "--filter", "label=org.itwin-run.managed=1", "--format", "{{.Repository}}:{{.Tag}}"]
    ).stdout.split()}
    assert {s["image"] for s in record["steps"].values()} <= made, (record, made)  # built by Podman's builder
    again = podman.itwin("--engine", "podman", "workflow.yml", cwd=project)
    rerun = json.loads(max((project / ".itwin-run" / "runs").glob("*/manifest.json"),
                           key=lambda p: p.stat().st_mtime).read_text())
    assert again.returncode == 0 and rerun["run_id"] != record["run_id"], again.stderr[-2000:]
    assert {s["status"] for s in rerun["steps"].values()} == {"up to date"}, rerun["steps"]
    assert not containers(podman, "org.itwin-run.run"), "the run's containers were left"
    listed = podman.itwin("images", cwd=project)
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert listed.returncode == 0 and {s["image"] for s in record["steps"].values()} <= {
        r[1] for r in rows if r[0] == "podman"}, listed.stdout + listed.stderr
    produced = contents(data)
    subprocess.run(["rm", "-rf", str(data)], check=True)
    docker = itwin("--force", "workflow.yml", cwd=project)  # Docker as root, same project: steps run as its owner
    assert docker.returncode == 0, docker.stderr[-3000:]
    assert contents(data) == produced, "Podman's outputs differ from Docker's"
    assert wait_for(lambda: not services(podman), tries=200), "a Podman service outlived its run"


def signal_slow_step(podman, name: str, sig: int) -> tuple[subprocess.Popen, dict, str]:
    """A run of one 120 s step as the user; once its container runs, `sig` to itwin-run itself (not runuser).
    The run's process, its manifest, and what it wrote on stderr."""
    project = podman.project(TOY, name)
    (project / "slow.yml").write_text(
        "datasets:\n  a: {location: ./data/a}\nsteps:\n"
        "  - slow: {output: a, command: python -c \"import time; time.sleep(120)\", "
        "env: {file: ./envs/requirements.txt}}\n")
    proc = subprocess.Popen(["runuser", "-u", podman.name, "--", "env", f"HOME={podman.home}",
                             f"PATH={podman.bin}:/usr/bin:/bin", str(podman.bin / "itwin-run"), "--engine", "podman",
                             "slow.yml"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: containers(podman, "org.itwin-run.step=slow"), tries=600), "the step never started"
        manifest = json.loads(next((project / ".itwin-run" / "runs").glob("*/manifest.json")).read_text())
        os.kill(manifest["pid"], sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc, manifest, err


def test_killed_runner_leaves_no_container_and_no_service(podman):
    _, manifest, _ = signal_slow_step(podman, "slow", signal.SIGKILL)  # no handler of the runner runs
    assert wait_for(lambda: not containers(podman, f"org.itwin-run.run={manifest['run_id']}")), \
        "the killed run's containers were left"
    assert wait_for(lambda: not services(podman), tries=300), "the killed run's Podman service was left"
    hist = podman.itwin("history", cwd=podman.home / "slow")
    assert manifest["run_id"] in hist.stdout and " crashed " in hist.stdout, hist.stdout + hist.stderr


def test_ctrl_c_stops_the_step_and_leaves_no_container(podman):
    proc, manifest, err = signal_slow_step(podman, "interrupted", signal.SIGINT)  # what Ctrl-C sends itwin-run
    assert proc.returncode == 130 and "slow  interrupted" in err, err[-2000:]
    assert not containers(podman, f"org.itwin-run.run={manifest['run_id']}"), "the interrupted step's container"


def test_time_limits_apply_and_rootless_cgroup_v1_says_so_in_one_line(podman):
    project = podman.project(TOY, "limits")
    (project / "wf.yml").write_text(
        "datasets:\n  a: {location: ./data/a}\nsteps:\n"
        "  - slow: {command: python -c \"import time; time.sleep(30)\", env: {file: ./envs/requirements.txt}, "
        "resources: {time: 2s}}\n"
        "  - capped: {output: a, command: python -c \"print('ran')\", env: {file: ./envs/requirements.txt}, "
        "resources: {memory: 200M}}\n")
    res = podman.itwin("--engine", "podman", "--keep-going", "wf.yml", cwd=project)
    assert res.returncode != 0
    assert "step 'slow' killed: time limit (2s)" in res.stderr, res.stderr[-3000:]
    cgroups = podman.run(["podman", "info", "--format", "{{.Host.CgroupsVersion}}"]).stdout.strip()
    if cgroups == "v1":
        notes = [ln for ln in res.stderr.splitlines() if "cannot limit cpus, memory or processes" in ln]
        assert len(notes) == 1 and "capped" in notes[0], res.stderr[-3000:]
    assert "capped | ran" in res.stdout + res.stderr


def test_doctor_as_the_user_says_what_podman_has(podman):
    res = podman.itwin("doctor", "--engine", "podman", cwd=podman.home)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ok   podman: podman "), res.stdout
    assert "ok   podman: storage driver overlay (the kernel's)" in lines, res.stdout
    assert any(ln.startswith("ok   podman: subordinate uid/gid ranges: ") for ln in lines), res.stdout
    assert "ok   podman: catatonit (the steps' init) found" in lines, res.stdout
    assert not services(podman) or wait_for(lambda: not services(podman), tries=200)


@pytest.mark.parametrize("store", ["vfs", "fuse-overlayfs"])
def test_doctor_says_how_to_move_to_the_kernels_overlay(podman, store):
    """Podman's vfs default copies a whole image per container, and fuse-overlayfs finds each build layer by
    comparing the whole image: doctor names the driver and how to switch. A store of its own for each
    (rootless_storage_path: its own libpod database too), so the user's store is untouched."""
    conf, root, runroot = podman.home / "other.conf", podman.home / "other-store", f"/tmp/other-run-{podman.name}"
    driver = ('driver = "vfs"' if store == "vfs" else
              'driver = "overlay"\n[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"')
    conf.write_text(f'[storage]\nrootless_storage_path = "{root}"\nrunroot = "{runroot}"\n{driver}\n')
    subprocess.run(["chown", f"{podman.name}:", str(conf)], check=True)
    try:
        res = podman.itwin("doctor", "--engine", "podman", cwd=podman.home, env={"CONTAINERS_STORAGE_CONF": str(conf)})
        line = next((ln for ln in res.stdout.splitlines() if "storage driver" in ln), "")
        if store == "vfs":
            assert "storage driver vfs: it copies a whole image for every container" in line, res.stdout
            assert "switch to overlay in ~/.config/containers/storage.conf" in line, line
        else:
            assert line.startswith("info podman: storage driver overlay through /usr/bin/fuse-overlayfs"), res.stdout
            assert "drop mount_program from ~/.config/containers/storage.conf" in line, line
        assert res.returncode == 0, res.stdout  # advice, not a failure: both work, slowly
    finally:
        subprocess.run(["rm", "-rf", str(conf), str(root), runroot])
    kernels = podman.run(["podman", "info", "--format", "{{.Store.GraphDriverName}} {{.Store.GraphOptions}}"])
    assert kernels.stdout.startswith("overlay ") and "fuse" not in kernels.stdout, kernels.stdout + kernels.stderr


def test_prune_removes_the_podman_images_no_record_names(podman):
    from tests.services import change_packages

    project = podman.project(TOY, "prune")
    env = project / "envs" / "requirements.txt"
    change_packages(env, time.time_ns())  # an image no other project of the user's names (the toy's is shared)
    assert podman.itwin("--engine", "podman", "workflow.yml", cwd=project).returncode == 0
    first = podman.itwin("build", "--engine", "podman", "workflow.yml", cwd=project).stdout.split()
    old = first[first.index("generate") + 1]
    change_packages(env, time.time_ns())  # another image for the step of that env file: `old` is named by none
    ran = podman.itwin("--engine", "podman", "workflow.yml", cwd=project)
    assert ran.returncode == 0, ran.stderr[-2000:]
    current = set(podman.itwin("build", "--engine", "podman", "workflow.yml", cwd=project).stdout.split()[1::2])
    assert old not in current
    dry = podman.itwin("prune", "--dry-run", cwd=project)
    assert f"would remove  podman  {old}" in dry.stdout, dry.stdout + dry.stderr
    assert not any(f"  {ref} " in dry.stdout for ref in current) and "itwin-run/base:" not in dry.stdout
    res = podman.itwin("prune", cwd=project)
    assert res.returncode == 0 and f"removed  podman  {old}" in res.stdout, res.stdout + res.stderr
    left = {ln.removeprefix("docker.io/") for ln in podman.run(["podman", "images", "--format",
                                                                "{{.Repository}}:{{.Tag}}"]).stdout.split()}
    assert old not in left and current <= left, left
    again = podman.itwin("--engine", "podman", "workflow.yml", cwd=project)
    assert again.returncode == 0 and "built " not in again.stderr, again.stderr[-2000:]


def test_cwl_mode_with_podman_writes_what_the_classical_run_writes(podman):
    project = podman.project(TOY, "cwl")
    classical = podman.itwin("--engine", "podman", "workflow.yml", cwd=project)
    assert classical.returncode == 0, classical.stderr[-3000:]
    produced = contents(project / "data")
    subprocess.run(["rm", "-rf", str(project / "data"), str(project / ".itwin-run")], check=True)
    assert itwin("export-cwl", "workflow.yml", "-o", "cwl", cwd=project).returncode == 0  # engine-neutral CWL
    (project / "workflow.yml").write_text((project / "workflow.yml").read_text() + "\nworkflowFileCWL: cwl/workflow.cwl\n")
    subprocess.run(["chown", "-R", f"{podman.name}:", str(project)], check=True)
    res = podman.itwin("--engine", "podman", "--cwl", "workflow.yml", cwd=project)
    assert res.returncode == 0 and "Final process status is success" in res.stdout + res.stderr, res.stderr[-3000:]
    assert contents(project / "data") == produced
    uid = pwd.getpwnam(podman.name).pw_uid
    assert {p.stat().st_uid for p in (project / "data").rglob("*")} == {uid}


def test_pushes_run_across_engines_through_pin_files(podman, docker_client, apptainer_env, tmp_path):
    """`build --push` with Podman (its registries.conf lets it speak plain HTTP to the loopback registry, as
    Docker's daemon does by default): Docker, as root elsewhere, and Apptainer run the workflow from the pin file
    alone; and the other way round, Docker's push runs with the user's Podman from its pin file alone."""
    from tests.services import registry

    store = Path(tempfile.mkdtemp(prefix="itwin-registry-"))
    with registry(store) as addr:
        conf = podman.home / ".config" / "containers" / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{addr}"\ninsecure = true\n')
        project = podman.project(TOY, "push")
        res = podman.itwin("build", "--engine", "podman", "workflow.yml", "--push", "--registry", f"{addr}/pod",
                           cwd=project)
        assert res.returncode == 0, res.stderr[-3000:]
        pins = json.loads((project / "workflow.images.json").read_text())["images"]
        assert set(pins) == {"generate", "square", "summarize"}
        assert all(ref.startswith(f"{addr}/pod/") and "@sha256:" in ref for ref in pins.values()), pins
        tmp_path.chmod(0o755)  # as root, steps run as the project's owner: root's tmp_path must be readable
        for engine in ("docker", "apptainer"):
            elsewhere = tmp_path / f"on-{engine}"
            subprocess.run(["cp", "-r", str(project), str(elsewhere)], check=True)
            elsewhere.chmod(0o755)
            env = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "sif")} if engine == "apptainer" else {}
            ran = itwin("--engine", engine, "--images", "workflow.images.json", "workflow.yml", cwd=elsewhere,
                        env=env)
            assert ran.returncode == 0, ran.stderr[-3000:]
            assert ran.stderr.count("pulled " if engine == "docker" else "converted ") == 3, ran.stderr[-3000:]
            assert (elsewhere / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\n")

        docker_side = tmp_path / "docker-side"  # the other way round: Docker pushes, the user's Podman runs
        subprocess.run(["cp", "-r", str(TOY), str(docker_side)], check=True)
        docker_side.chmod(0o755)
        res = itwin("build", "workflow.yml", "--push", "--registry", f"{addr}/dock", cwd=docker_side)
        assert res.returncode == 0, res.stderr[-3000:]
        user_side = podman.project(docker_side, "pulled")
        ran = podman.itwin("--engine", "podman", "--images", "workflow.images.json", "workflow.yml", cwd=user_side)
        conf.unlink()
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stderr.count("pulled ") == 3 and "built " not in ran.stderr, ran.stderr[-3000:]
        assert (user_side / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\n")
    shutil.rmtree(store, ignore_errors=True)


def test_images_a_user_saved_with_podman_load_into_docker_and_run(podman, docker_client, tmp_path):
    """`build --save` by Podman for a site without a registry, `load` there by Docker: the workflow runs from
    the loaded images with nothing built."""
    project = podman.project(TOY, "save")
    stamp = time.time_ns()  # images of its own: Docker's copies are removed below, and other workers run the toy's
    change_packages(project / "envs" / "requirements.txt", stamp)
    change_packages(project / "envs" / "environment.yml", stamp + 1)
    dockerfile = project / "envs" / "summarize" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"LABEL org.itwin-run.test={stamp}\n")
    archive = podman.home / "save-archive"
    res = podman.itwin("build", "--engine", "podman", "workflow.yml", "--save", str(archive), cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(archive.glob("*.tar"))) >= 4 and (archive / "images.json").is_file()  # parent, base, 3 steps
    refs = json.loads((archive / "images.json").read_text())["images"]
    for ref in set(refs.values()):  # Docker has none of them before the load
        for image in docker_client.images.list(name=ref.rsplit(":", 1)[0]):
            if ref in image.tags:
                docker_client.images.remove(ref, force=True)
    loaded = itwin("load", str(archive), cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert set(refs.values()) <= {line.removeprefix("docker.io/") for line in loaded.stdout.split()}, loaded.stdout
    elsewhere = tmp_path / "elsewhere"
    subprocess.run(["cp", "-r", str(project), str(elsewhere)], check=True)
    tmp_path.chmod(0o755)
    # the user's pip has no wheelhouse (root's has one here, which would make other images): the same build inputs
    ran = itwin("workflow.yml", cwd=elsewhere, env={"ITWIN_RUN_WHEELHOUSE": "none"})
    assert ran.returncode == 0 and "built " not in ran.stderr, ran.stderr[-3000:]
    assert (elsewhere / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\n")
    shutil.rmtree(archive, ignore_errors=True)


SWEEP = """datasets:
  runs: {location: ./data/runs}
  picked: {location: ./data/picked}
steps:
  - train:
      output: runs
      command: python train.py
      env: {file: ./envs/requirements.txt}
      params: {epochs: 1}
      sweep:
        grid: {lr: [0.1, 0.01, 0.3]}
        best: {metric: val_loss, mode: min}
        parallel: 2
  - report:
      input: runs
      output: picked
      command: python report.py
      env: {file: ./envs/requirements.txt}
"""
TRAIN = """import argparse, json, os, pathlib
ap = argparse.ArgumentParser(); ap.add_argument("--output"); ap.add_argument("--lr", type=float)
ap.add_argument("--epochs", type=int); a = ap.parse_args()
pathlib.Path(a.output, "metrics.json").write_text(json.dumps({"val_loss": abs(a.lr - 0.05), "uid": os.getuid()}))
"""
REPORT = """import argparse, json, pathlib
ap = argparse.ArgumentParser(); ap.add_argument("--input"); ap.add_argument("--output"); a = ap.parse_args()
best = pathlib.Path(a.input, "best", "metrics.json").read_text()
pathlib.Path(a.output, "best.json").write_text(best)
"""


def test_a_user_sweeps_with_podman_and_the_best_point_goes_on(podman):
    """A sweep as a non-root user (rootless Podman): its points run two at a time in their own folders, the best is
    linked, the next step reads it, every file is the user's; a rerun runs nothing."""
    project = podman.project(TOY, "sweep")
    for name, text in (("sweep.yml", SWEEP), ("train.py", TRAIN), ("report.py", REPORT)):
        (project / name).write_text(text)
    subprocess.run(["chown", "-R", f"{podman.name}:", str(project)], check=True)
    res = podman.itwin("--engine", "podman", "--jobs", "2", "sweep.yml", cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = project / "data" / "runs"
    assert os.readlink(runs / "best") == "lr-0.01"  # |0.01 - 0.05| is the least
    assert json.loads((project / "data" / "picked" / "best.json").read_text())["val_loss"] == pytest.approx(0.04)
    record = json.loads((runs / "sweep.json").read_text())
    assert record["best"] == "lr-0.01" and len(record["points"]) == 3
    uid = pwd.getpwnam(podman.name).pw_uid
    assert {p.lstat().st_uid for p in (project / "data").rglob("*")} == {uid}, "every file is the user's"
    again = podman.itwin("--engine", "podman", "--jobs", "2", "sweep.yml", cwd=project)
    assert again.returncode == 0 and "run train." not in again.stderr, again.stderr[-2000:]
