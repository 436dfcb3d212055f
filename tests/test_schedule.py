"""Scheduling, resume and reliability against the real daemon: up-to-date skipping, DAG and --jobs, slices,
failure and interruption, locking, provenance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ITWIN_RUN, itwin, run_ids
from tests.services import change_packages

pytestmark = pytest.mark.docker
# tests that start steps sleeping 60 s, or look for any such process on the machine: one worker runs them in turn
SLEEPERS = pytest.mark.xdist_group("sleep60")


def next_second() -> int:
    """A whole second from now (Docker's event log counts in seconds), once it has begun."""
    mark = int(time.time()) + 1
    time.sleep(mark - time.time() + 0.05)
    return mark


def created(client, since: int, project: Path) -> int:
    """Containers the runs of `project` created since `since` (Docker's event log; other tests' runs may create
    theirs meanwhile)."""
    runs = set(run_ids(project))
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create", "label": "org.itwin-run.managed=1"})
    return sum(1 for e in events if e.get("time", 0) >= since
               and e.get("Actor", {}).get("Attributes", {}).get("org.itwin-run.run") in runs)


def statuses(res) -> dict[str, str]:
    """The status table printed at the end of a run."""
    out = {}
    for line in res.stderr.splitlines():
        m = re.match(r"^  (\S+)\s+((?:done|up to date|failed|interrupted|not run|skipped: upstream failed))$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_unchanged_rerun_starts_no_container(toy, docker_client, no_leftovers):
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    since = next_second()
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 0
    assert statuses(res) == {"generate": "up to date", "square": "up to date", "summarize": "up to date"}
    assert created(docker_client, since, toy) == 0
    since = next_second()
    assert itwin("--force-step", "generate", "--only", "generate", "workflow.yml", cwd=toy).returncode == 0
    assert created(docker_client, since, toy) == 2  # the step and the run's network holder: the count is real


def test_changes_rerun_the_step_and_downstream_only(toy, docker_client, no_leftovers):
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    env = toy / "envs" / "environment.yml"  # square's env file
    change_packages(env, time.time_ns())
    res = itwin("workflow.yml", cwd=toy)
    assert statuses(res) == {"generate": "up to date", "square": "done", "summarize": "done"}
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace("count: 5", "count: 6"))  # a param of the first step
    res = itwin("workflow.yml", cwd=toy)
    assert statuses(res) == {"generate": "done", "square": "done", "summarize": "done"}
    assert (toy / "data/summary/summary.txt").read_text().startswith("sum=91\n")
    squares = toy / "data" / "squares" / "squares.txt"  # an output edited by hand: that step is not intact
    squares.write_text("1\n")
    res = itwin("workflow.yml", cwd=toy)
    assert statuses(res) == {"generate": "up to date", "square": "done", "summarize": "done"}
    assert squares.read_text() == "1\n4\n9\n16\n25\n36\n"
    res = itwin("--force", "workflow.yml", cwd=toy)
    assert set(statuses(res).values()) == {"done"}
    res = itwin("--force-step", "summarize", "workflow.yml", cwd=toy)
    assert statuses(res) == {"generate": "up to date", "square": "up to date", "summarize": "done"}


def test_failure_marks_nothing_complete_and_skips_downstream(toy, docker_client, no_leftovers):
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    before = (toy / "data/raw/numbers.txt").stat().st_mtime_ns
    square = toy / "steps" / "square.py"
    good = square.read_text()
    square.write_text("import sys\nprint('about to fail')\nsys.exit(7)\n")
    res = itwin("workflow.yml", cwd=toy)  # the step's script changed: it reruns
    assert res.returncode == 1 and "failed with exit code 7" in res.stderr
    assert statuses(res) == {"generate": "up to date", "square": "failed", "summarize": "skipped: upstream failed"}
    assert (toy / "data/raw/numbers.txt").stat().st_mtime_ns == before  # earlier outputs untouched
    square.write_text(good)
    res = itwin("workflow.yml", cwd=toy)  # square's output was never marked complete: it runs again
    assert statuses(res) == {"generate": "up to date", "square": "done", "summarize": "done"}


PARALLEL = """
datasets:
  a: {location: ./data/a}
  b: {location: ./data/b}
  c: {location: ./data/c}
steps:
  - a: {output: a, command: "python -c \\"import time; time.sleep(SLEEP)\\"", env: {file: ./envs/requirements.txt},
      allow_empty_output: true}
  - b: {output: b, command: "python -c \\"import time; time.sleep(SLEEP)\\"", env: {file: ./envs/requirements.txt},
      allow_empty_output: true}
  - c: {input: [a, b], output: c, command: "python -c pass", env: {file: ./envs/requirements.txt},
      allow_empty_output: true}
"""


def write_parallel(toy: Path, sleep: float) -> None:
    (toy / "par.yml").write_text(PARALLEL.replace("SLEEP", str(sleep)))


def described(pids: str) -> str:
    """What each of these processes is, and under which parent (a leftover's failure message)."""
    return subprocess.run(["ps", "-o", "pid,ppid,user,etimes,stat,args", "-p", ",".join(pids.split())],
                          capture_output=True, text=True).stdout


def manifest(toy: Path) -> dict:
    runs = sorted((toy / ".itwin-run" / "runs").glob("*/manifest.json"))
    return json.loads(runs[-1].read_text())


def test_independent_steps_run_concurrently_with_jobs(toy, docker_client, no_leftovers):
    write_parallel(toy, 1.5)
    res = itwin("--jobs", "2", "par.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    steps = manifest(toy)["steps"]
    assert steps["b"]["start"] < steps["a"]["end"] and steps["a"]["start"] < steps["b"]["end"]  # overlapped
    assert steps["c"]["start"] >= max(steps["a"]["end"], steps["b"]["end"])  # after both inputs


def test_slices(toy, docker_client, no_leftovers):
    res = itwin("--until", "square", "workflow.yml", cwd=toy)
    assert res.returncode == 0 and set(statuses(res)) == {"generate", "square"}
    res = itwin("--only", "summarize", "workflow.yml", cwd=toy)
    assert res.returncode == 0 and set(statuses(res)) == {"summarize"}
    res = itwin("--from", "square", "--force", "workflow.yml", cwd=toy)
    assert set(statuses(res)) == {"square", "summarize"}
    res = itwin("--only", "nope", "workflow.yml", cwd=toy)
    assert res.returncode == 2 and "no step named 'nope'" in res.stderr  # a usage error


def start_slow(toy: Path) -> subprocess.Popen:
    write_parallel(toy, 60)
    proc = subprocess.Popen([*ITWIN_RUN, "par.yml"], cwd=toy, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ})
    for _ in range(200):
        runs = list((toy / ".itwin-run" / "runs").glob("*/manifest.json"))
        if runs and "a" in json.loads(runs[0].read_text() or "{}").get("steps", {}):
            break
        time.sleep(0.1)
    time.sleep(1.5)  # the container is up
    return proc


@SLEEPERS
def test_second_run_refuses_while_first_runs(toy, docker_client, no_leftovers):
    proc = start_slow(toy)
    try:
        res = itwin("par.yml", cwd=toy)
        assert res.returncode == 3
        assert f"another itwin-run (pid {proc.pid}) is running on {toy}" in res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@SLEEPERS
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129),
                                      (signal.SIGQUIT, 131)])
def test_signal_stops_containers_and_records_interruption(toy, docker_client, no_leftovers, sig, code):
    proc = start_slow(toy)
    run = f"org.itwin-run.run={manifest(toy)['run_id']}"
    assert docker_client.containers.list(ignore_removed=True, filters={"label": [run, "org.itwin-run.step=a"]})
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)  # the step sleeps 60 s: an exit before that is the signal's
    assert proc.returncode == code
    assert "Traceback" not in err
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": [run, "org.itwin-run.step"]})
    m = manifest(toy)
    assert m["status"] == "interrupted" and m["steps"]["a"]["status"] == "interrupted"
    assert not (toy / ".itwin-run" / "steps" / "a.json").exists()  # not marked complete


def test_provenance_history_and_show(toy, docker_client, no_leftovers):
    assert itwin("history", cwd=toy).stderr == f"no runs yet in {toy}\n"
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    hist = itwin("history", cwd=toy)
    assert hist.returncode == 0 and "succeeded" in hist.stdout and "(3 done)" in hist.stdout
    header, row = hist.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "STARTED", "STATUS"]
    run_id = row.split()[0]
    shown = json.loads(itwin("show", run_id[:18], cwd=toy).stdout)
    gen = shown["steps"]["generate"]
    assert gen["exit_code"] == 0 and gen["image"].startswith("itwin-run/envs-requirements:")
    assert gen["argv"][:3] == ["python", "./steps/generate.py", "--output"] and gen["engine"] == "docker"
    assert {"source": str(toy), "target": str(toy), "read_only": True} in gen["mounts"]
    assert len(gen["fingerprint"]) == 64 and gen["end"] >= gen["start"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", shown["started"])  # ISO 8601


@SLEEPERS
def test_signal_stops_apptainer_processes(toy, apptainer_env, docker_client):
    write_parallel(toy, 60)
    # the SIFs first, so that the apptainer process seen below is a step's, not a conversion's
    assert itwin("build", "--engine", "apptainer", "par.yml", cwd=toy, env=apptainer_env).returncode == 0
    proc = subprocess.Popen([*ITWIN_RUN, "--engine", "apptainer", "par.yml"], cwd=toy, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **apptainer_env})

    def children() -> list[str]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        return out.split()

    for _ in range(300):
        if children():
            break
        time.sleep(0.1)
    time.sleep(2)  # the step is running
    assert children(), "the step never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)  # the step sleeps 60 s: an exit before that is the signal's
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert manifest(toy)["steps"]["a"]["status"] == "interrupted"
    for _ in range(50):  # the step's processes (inside the container: they show in the host's process table) are gone
        leftover = subprocess.run(["pgrep", "-f", r"time\.sleep\(60\)"], capture_output=True, text=True).stdout
        if not leftover.strip():
            break
        time.sleep(0.1)
    assert not leftover.strip(), described(leftover)


def test_sigint_before_the_step_container_starts(toy, docker_client, no_leftovers):
    """Defect 1: SIGINT once the run's network holder exists, before the step's container starts (it may be created:
    it is made while the holder starts)."""
    write_parallel(toy, 120)
    proc = subprocess.Popen([*ITWIN_RUN, "par.yml"], cwd=toy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(3000):  # this run's holder (other tests' runs may have theirs)
        runs = [f"org.itwin-run.run={run}" for run in run_ids(toy)]
        if runs and docker_client.containers.list(ignore_removed=True, all=True,
                                                  filters={"label": [*runs, "org.itwin-run.role=network"]}):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # the step sleeps 120 s: an exit before that is the signal's
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    m = manifest(toy)
    assert m["status"] == "interrupted" and "done" not in {s.get("status") for s in m["steps"].values()}


def test_engine_error_is_a_failed_run_in_history(toy, docker_client, no_leftovers):
    """Defect 2: a step the daemon refuses (GPUs 98 and 99: no NVIDIA runtime here, no such devices on a GPU host)
    makes the run failed in history."""
    res = itwin("--gpus", "98,99", "workflow.yml", cwd=toy)
    assert res.returncode == 1
    hist = itwin("history", cwd=toy).stdout
    assert " failed " in hist and "succeeded" not in hist


def test_editing_a_file_a_config_names_reruns_the_step(toy, docker_client, no_leftovers):
    """Defect 3: the step reads a.txt, which names b.txt; editing b.txt reruns it."""
    (toy / "a.txt").write_text("b.txt\n")
    (toy / "b.txt").write_text("1\n")
    (toy / "cfg.yml").write_text(
        "datasets: {o: {location: ./data/o}}\nsteps:\n"
        "  - read: {output: o, command: \"python -c \\\"import sys; print(open(open('a.txt').read().strip()).read())\\\"\", "
        "env: {file: ./envs/requirements.txt}, allow_empty_output: true}\n")
    assert itwin("cfg.yml", cwd=toy).returncode == 0
    (toy / "b.txt").write_text("2\n")
    res = itwin("cfg.yml", cwd=toy)
    assert statuses(res) == {"read": "done"} and "read | 2" in res.stdout
    (toy / "README.md").write_text("notes\n")  # what no step reads changes nothing
    assert statuses(itwin("cfg.yml", cwd=toy)) == {"read": "up to date"}


def test_image_tag_does_not_change_with_run_state(toy, docker_client, no_leftovers):
    """Defect 4: a Dockerfile env at the project root hashes the tree without .itwin-run/ and the datasets."""
    (toy / "Dockerfile").write_text((toy / "envs/summarize/Dockerfile").read_text())
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace("file: ./envs/summarize/Dockerfile", "file: ./Dockerfile"))
    first = itwin("build", "workflow.yml", cwd=toy)
    assert first.returncode == 0, first.stderr
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    again = itwin("build", "workflow.yml", cwd=toy)
    assert again.stdout == first.stdout and "built" not in again.stderr


def test_cwl_flags_are_honoured_or_refused(toy, docker_client):
    """Defect 5: --cwl refuses what it cannot honour (exit 2, one line) instead of ignoring it."""
    assert itwin("export-cwl", "workflow.yml", "-o", "cwl", cwd=toy).returncode == 0
    (toy / "workflow.yml").write_text((toy / "workflow.yml").read_text() + "\nworkflowFileCWL: cwl/workflow.cwl\n")
    named = {"--only": "--only/--from/--until do not apply to --cwl", "--from": "--only/--from/--until do not apply",
             "--executor": "it does not combine with --executor slurm", "--user": "--user does not apply to --cwl"}
    for args in (["--only", "square"], ["--executor", "slurm"], ["--from", "square"], ["--user", "1:1"]):
        res = itwin("--cwl", *args, "workflow.yml", cwd=toy)
        assert res.returncode == 2 and "Traceback" not in res.stderr, args
        assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: "), args
        assert named[args[0]] in res.stderr, res.stderr  # the refusal names the flag it refuses


def test_a_build_failure_is_a_failed_run_in_history(toy, docker_client, no_leftovers):
    (toy / "envs" / "requirements.txt").write_text("this-package-does-not-exist-itwin==0.0.1\n")
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 3
    row = itwin("history", cwd=toy).stdout.splitlines()[1]
    assert " failed " in row and "build of itwin-run/envs-requirements:" in row and "(3 not run)" in row


TRIAL = """import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--output")
p.add_argument("--x", type=float)
p.add_argument("--y", type=int)
a = p.parse_args()
out = pathlib.Path(a.output)
(out / "metrics.json").write_text(json.dumps({"loss": (a.x - 2) ** 2 + a.y}))
(out / "args.json").write_text(json.dumps({"x": a.x, "y": a.y}))
"""
ADAPTIVE = """
datasets:
  fits: {location: ./data/fits}
steps:
  - fit:
      input: null
      output: fits
      command: python ./steps/trial.py
      env: {file: ./envs/requirements.txt}
      sweep:
        optuna: {trials: TRIALS, seed: 0, space: {x: {uniform: [0, 4]}, y: {choice: [0, 1]}}}
        best: {metric: loss, mode: min}
        parallel: 2
"""


def test_an_adaptive_sweep_runs_in_waves_and_resumes(toy, docker_client, no_leftovers):
    """Optuna's ask-and-tell with real containers: 6 trials 2 at a time, each wave asked once the one before ended;
    each container got the values the study holds; the least loss goes on; a rerun creates no container and more
    trials run only the new ones."""
    (toy / "steps" / "trial.py").write_text(TRIAL)
    (toy / "adaptive.yml").write_text(ADAPTIVE.replace("TRIALS", "6"))
    res = itwin("--jobs", "2", "adaptive.yml", cwd=toy)
    assert res.returncode == 0, res.stderr[-3000:]
    fits = toy / "data" / "fits"
    table = json.loads((fits / "sweep.json").read_text())
    assert [p["point"] for p in table["points"]] == [f"trial-{k}" for k in range(6)]
    for row in table["points"]:  # what the study asked is what the container got
        got = json.loads((fits / row["point"] / "args.json").read_text())
        assert got == {"x": row["params"]["x"], "y": row["params"]["y"]} and 0 <= got["x"] <= 4
        assert row["loss"] == pytest.approx((got["x"] - 2) ** 2 + got["y"])
    assert table["best"] == min(table["points"], key=lambda r: r["loss"])["point"]
    assert os.readlink(fits / "best") == table["best"]
    steps = json.loads(sorted((toy / ".itwin-run" / "runs").glob("*/manifest.json"))[-1].read_text())["steps"]
    for wave in (1, 2):  # a wave starts once the one before has ended
        before = [steps[f"fit.trial-{k}"]["end"] for k in (2 * wave - 2, 2 * wave - 1)]
        assert all(steps[f"fit.trial-{k}"]["start"] >= max(before) for k in (2 * wave, 2 * wave + 1))
    assert len(list((toy / ".itwin-run" / "studies").glob("fit-*.journal"))) == 1

    since = next_second()
    again = itwin("--jobs", "2", "adaptive.yml", cwd=toy)
    assert again.returncode == 0 and created(docker_client, since, toy) == 0, again.stderr[-2000:]
    (toy / "adaptive.yml").write_text(ADAPTIVE.replace("TRIALS", "8"))
    more = itwin("--jobs", "2", "adaptive.yml", cwd=toy)
    assert more.returncode == 0, more.stderr[-3000:]
    ran = sorted(line.split(":")[0].removeprefix("run ") for line in more.stderr.splitlines() if line.startswith("run "))
    assert ran == ["fit.trial-6", "fit.trial-7"], more.stderr[-2000:]
    assert len(json.loads((fits / "sweep.json").read_text())["points"]) == 8


CHAIN = """
datasets:
  a: {location: ./data/a}
  b: {location: ./data/b}
  c: {location: ./data/c}
steps:
  - a: {output: a, command: "python -c \\"import time, sys; time.sleep(1.5); sys.exit(CODE)\\"",
      env: {file: ./envs/requirements.txt}, allow_empty_output: true}
  - b: {input: a, output: b, command: "python -c pass", env: {file: ./envs/requirements.txt}, allow_empty_output: true}
  - c: {input: b, output: c, command: "python -c pass", env: {file: ./envs/requirements.txt}, allow_empty_output: true}
"""


def container_events(client, since: int, project: Path) -> list[tuple[float, str, str]]:
    """(time, event, step) of the containers the runs of `project` made since `since`, in order."""
    runs = set(run_ids(project))
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "label": "org.itwin-run.managed=1"})
    return [(e["timeNano"] / 1e9, e["status"], e["Actor"]["Attributes"].get("org.itwin-run.step", "holder"))
            for e in events if e["Actor"]["Attributes"].get("org.itwin-run.run") in runs
            and e["status"] in ("create", "start", "die", "destroy")]


@SLEEPERS
def test_the_next_steps_container_is_made_while_its_upstream_runs(toy, docker_client, no_leftovers):
    """Pipelined start: a step's container is created while the step before it runs, and started (not created)
    once that one ended; a container made for a step that then does not run is removed."""
    (toy / "data").mkdir(exist_ok=True)
    for d in "abc":  # a rerun's outputs are there: what a step mounts exists before its upstream ends
        (toy / "data" / d).mkdir(exist_ok=True)
    (toy / "chain.yml").write_text(CHAIN.replace("CODE", "0"))
    since = next_second()
    res = itwin("chain.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    ev = container_events(docker_client, since, toy)
    at = {(kind, step): t for t, kind, step in ev}
    assert [step for _, kind, step in ev if kind == "create"].count("b") == 1 and len(
        [1 for _, kind, _ in ev if kind == "create"]) == 4  # the holder and one container a step
    assert at["create", "b"] < at["die", "a"] < at["start", "b"]
    assert at["create", "c"] < at["die", "b"] < at["start", "c"]
    (toy / "chain.yml").write_text(CHAIN.replace("CODE", "3"))
    since = next_second()
    res = itwin("chain.yml", cwd=toy)
    assert res.returncode == 1 and statuses(res) == {"a": "failed", "b": "skipped: upstream failed",
                                                     "c": "skipped: upstream failed"}
    ev = container_events(docker_client, since, toy)
    assert [(kind, step) for _, kind, step in ev if step == "b"] == [("create", "b"), ("destroy", "b")]
    assert not [1 for _, _, step in ev if step == "c"]
    (toy / "chain.yml").write_text(CHAIN.replace("1.5", "60").replace("CODE", "0"))  # Ctrl-C once b's is made
    since = next_second()
    proc = subprocess.Popen([*ITWIN_RUN, "chain.yml"], cwd=toy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if ("create", "b") in {(kind, step) for _, kind, step in container_events(docker_client, since, toy)}:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    ev = container_events(docker_client, since, toy)
    assert [(kind, step) for _, kind, step in ev if step == "b"] == [("create", "b"), ("destroy", "b")]
