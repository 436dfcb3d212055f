"""When the runner dies, not the run (real daemon, real Apptainer): a runner killed outright leaves no container or
step process behind and its record says `crashed`; a daemon that goes away mid-step is one line and a failed run;
the next run removes what either left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ITWIN_RUN, REPO, itwin
from tests.services import wait_for
from tests.test_schedule import SLEEPERS, described, manifest, start_slow, write_parallel

pytestmark = pytest.mark.docker

RUN_LABEL = "org.itwin-run.run"
STEP_LABEL = "org.itwin-run.step"


@SLEEPERS
def test_kill_9_leaves_no_container_and_the_run_is_crashed(toy, docker_client, no_leftovers):
    proc = start_slow(toy)
    run_id = manifest(toy)["run_id"]
    labelled = {"label": f"{RUN_LABEL}={run_id}"}
    assert docker_client.containers.list(ignore_removed=True, filters=labelled), "the step's container never ran"
    steps = docker_client.containers.list(ignore_removed=True, filters={"label": [f"{RUN_LABEL}={run_id}", STEP_LABEL]})
    parents = [c.attrs["HostConfig"]["CgroupParent"] for c in steps if c.labels.get("org.itwin-run.role") != "network"]
    if os.getuid() == 0 and docker_client.info()["CgroupDriver"] == "cgroupfs":
        assert parents and all(parents), parents  # each step's container is measured in a cgroup parent of its own
    proc.kill()  # SIGKILL: no handler of the runner runs
    proc.wait(timeout=30)
    # the watchdog removes the run's containers, the step's and the network holder (within 10 s: 100 x 0.1 s)
    assert wait_for(lambda: not docker_client.containers.list(ignore_removed=True, all=True, filters=labelled)), \
        [c.name for c in docker_client.containers.list(ignore_removed=True, all=True, filters=labelled)]
    hist = itwin("history", cwd=toy)
    assert hist.returncode == 0 and f"{run_id}" in hist.stdout and " crashed " in hist.stdout, hist.stdout
    m = manifest(toy)
    assert m["status"] == "crashed" and m["steps"]["a"]["status"] == "interrupted"
    assert not (toy / ".itwin-run" / "steps" / "par.yml" / "a.json").exists()
    # the killed runner never removed its cgroup parents: as if it had been killed an hour ago (a parent that changed
    # less than a minute ago may be a live run's, its container just ended), the next run removes them
    cgroups = Path("/sys/fs/cgroup")
    left = [d for p in parents if p for d in [*cgroups.glob(p.lstrip("/")), *cgroups.glob(f"*/{p.lstrip('/')}")]]
    for d in left:
        if d.exists():
            os.utime(d, (time.time() - 3600,) * 2)
    write_parallel(toy, 0.1)
    res = itwin("par.yml", cwd=toy)  # a's output is not trusted: it runs again
    assert res.returncode == 0 and "✓ a " in res.stderr, res.stderr[-2000:]
    assert not [d for d in left if d.exists()]


@pytest.mark.alone
@pytest.mark.idle  # any watchdog on the machine
def test_a_normal_end_leaves_no_watchdog(toy, docker_client, no_leftovers):
    write_parallel(toy, 0.1)
    res = itwin("par.yml", cwd=toy)
    assert res.returncode == 0, res.stderr[-2000:]
    left = subprocess.run(["pgrep", "-f", "runner/engines/watchdog.py"], capture_output=True, text=True).stdout
    assert not left.strip(), left


@SLEEPERS
def test_kill_9_stops_apptainer_steps(toy, apptainer_env, docker_client):
    write_parallel(toy, 60)
    assert itwin("build", "--engine", "apptainer", "par.yml", cwd=toy, env=apptainer_env).returncode == 0
    proc = subprocess.Popen([*ITWIN_RUN, "--engine", "apptainer", "par.yml"], cwd=toy, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **apptainer_env})

    def step_processes() -> str:
        return subprocess.run(["pgrep", "-f", r"time\.sleep\(60\)"], capture_output=True, text=True).stdout.strip()

    assert wait_for(step_processes, tries=300), "the step never started"
    proc.kill()
    proc.wait(timeout=30)
    assert wait_for(lambda: not step_processes()), described(step_processes())
    assert itwin("history", cwd=toy).stdout.count(" crashed ") == 1


@pytest.fixture
def daemon_back(toy):
    """The test stops the daemon; it is started again whatever happens (every later test needs it), and what the
    test's runs left is removed."""
    yield
    res = subprocess.run(["bash", str(REPO / "images" / "ensure-dockerd.sh")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    import docker

    client = docker.from_env()
    for run in (toy / ".itwin-run" / "runs").glob("*"):
        for c in client.containers.list(ignore_removed=True, all=True, filters={"label": f"{RUN_LABEL}={run.name}"}):
            try:
                c.remove(force=True)
            except docker.errors.APIError:  # a network holder the daemon removes itself meanwhile
                pass


def stop_daemon(sig: int) -> None:
    pid = int(Path("/var/run/docker.pid").read_text())
    os.kill(pid, sig)
    for _ in range(600):  # a stop stops the running containers first
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            Path("/var/run/docker.pid").unlink(missing_ok=True)  # SIGKILL leaves it
            return
        time.sleep(0.1)
    raise AssertionError("dockerd did not stop")


@pytest.mark.alone  # stops the daemon
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "crashed"])
def test_daemon_going_away_mid_step_is_one_line_and_a_failed_run(toy, docker_client, daemon_back, how):
    if os.getuid() != 0 or not Path("/var/run/docker.pid").is_file():
        pytest.skip("stopping the daemon needs root and a dockerd this machine started (images/ensure-dockerd.sh)")
    proc = start_slow(toy)
    run_id = manifest(toy)["run_id"]
    stop_daemon(how)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the Docker daemon stopped answering during step 'a'" in errors[0], err[-3000:]
    m = json.loads((toy / ".itwin-run" / "runs" / run_id / "manifest.json").read_text())
    assert m["status"] == "failed" and "the Docker daemon stopped answering" in m["steps"]["a"]["reason"], m

    subprocess.run(["bash", str(REPO / "images" / "ensure-dockerd.sh")], check=True, capture_output=True, timeout=120)
    import docker

    client = docker.from_env()
    labelled = {"label": f"{RUN_LABEL}={run_id}"}
    write_parallel(toy, 0.1)
    res = itwin("par.yml", cwd=toy)  # removes what the dead run left, then runs
    assert res.returncode == 0, res.stderr[-2000:]
    assert not client.containers.list(ignore_removed=True, all=True, filters=labelled), "the failed run's containers were left"
