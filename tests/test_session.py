"""The run session's semantics against an in-process fake engine (the fast tier, `make test-fast`): ordering,
--jobs, selection, up-to-date skipping and fingerprints, failures, cancellation at every moment, --keep-going."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from runner import session, workflow
from runner.errors import StepFailed
from runner.executors.local import LocalExecutor
from runner.limits import THREAD_VARS
from runner.state import State
from tests.fakes import FakeBuilder, FakeRunner, engine_error, fails, sleeps

CHAIN = """
datasets:
  a: {location: ./data/a}
  b: {location: ./data/b}
  c: {location: ./data/c}
steps:
  - one: {output: a, command: "python one.py", env: {file: env.txt}}
  - two: {input: a, output: b, command: "python two.py", env: {file: env.txt}}
  - three: {input: b, output: c, command: "python three.py", env: {file: env.txt}}
"""
FORK = """
datasets:
  a: {location: ./data/a}
  b: {location: ./data/b}
  c: {location: ./data/c}
steps:
  - a: {output: a, command: "python a.py", env: {file: env.txt}}
  - b: {output: b, command: "python b.py", env: {file: env.txt}}
  - c: {input: [a, b], output: c, command: "python c.py", env: {file: env.txt}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "env.txt").write_text("")
    for name in ("one", "two", "three", "a", "b", "c"):
        (tmp_path / f"{name}.py").write_text("print('hi')\n")
    (tmp_path / "chain.yml").write_text(CHAIN)
    (tmp_path / "fork.yml").write_text(FORK)
    return tmp_path


def run(project: Path, runner: FakeRunner, wf: str = "chain.yml", builder: FakeBuilder | None = None,
        **opts) -> session.RunSession:
    w = workflow.load(project / wf, root=project)
    s = session.RunSession(w, builder or FakeBuilder(), runner, LocalExecutor(runner, opts.get("jobs", 1)),
                           session.RunOptions(**opts))
    s.run()
    return s


def last_manifest(project: Path) -> dict:
    manifests = [json.loads(p.read_text()) for p in (project / ".itwin-run/runs").glob("*/manifest.json")]
    return max(manifests, key=lambda m: m["started"])


def test_order_and_up_to_date(project):
    r = FakeRunner()
    s = run(project, r)
    assert r.started == ["one", "two", "three"] and set(s.status.values()) == {"done"}
    r2 = FakeRunner()
    s = run(project, r2)
    assert r2.started == [] and set(s.status.values()) == {"up to date"}


def test_jobs_run_independent_steps_together(project):
    both = threading.Barrier(2, timeout=10)  # each of a and b returns only once the other runs too

    def meet(job):
        both.wait()  # one after the other: the barrier breaks and the step fails
        return 0

    r = FakeRunner({"a": meet, "b": meet})
    run(project, r, "fork.yml", jobs=2)
    order = [(kind, step) for _, kind, step in r.events]
    assert order.index(("start", "c")) > max(order.index(("end", "a")), order.index(("end", "b")))
    steps = last_manifest(project)["steps"]
    assert max(steps["a"]["start"], steps["b"]["start"]) <= min(steps["a"]["end"], steps["b"]["end"])  # recorded


def test_selection(project):
    r = FakeRunner()
    s = run(project, r, until="two")
    assert r.started == ["one", "two"] and "three" not in s.status
    r = FakeRunner()
    run(project, r, only=["three"])
    assert r.started == ["three"]
    r = FakeRunner()
    run(project, r, from_="two", force=[])
    assert r.started == ["two", "three"]


def test_a_file_named_by_a_file_the_step_reads_reruns_it(project):
    """Defect 3: `--config a.txt` where a.txt names b.txt; editing b.txt must rerun the step."""
    (project / "a.txt").write_text("b.txt\n")
    (project / "b.txt").write_text("1\n")
    (project / "chain.yml").write_text(CHAIN.replace('"python one.py"', '"python one.py --config a.txt"'))
    run(project, FakeRunner())
    (project / "b.txt").write_text("2\n")
    r = FakeRunner()
    run(project, r)
    assert r.started == ["one", "two", "three"]


def test_docs_logs_and_branch_switches_rerun_nothing(project):
    run(project, FakeRunner())
    (project / "README.md").write_text("edited\n")
    (project / "run.log").write_text("a log\n")
    script = project / "two.py"
    script.write_text("print('changed')\n")  # a branch switch away ...
    script.write_text("print('hi')\n")  # ... and back: same content, new mtime
    os.utime(script, (time.time() + 5, time.time() + 5))
    r = FakeRunner()
    run(project, r)
    assert r.started == []


def test_depends_narrows_the_fingerprint(project):
    (project / "chain.yml").write_text(CHAIN.replace('command: "python one.py",',
                                                     'command: "python one.py", depends: ["one.py"],'))
    run(project, FakeRunner())
    (project / "unrelated.py").write_text("x = 1\n")
    r = FakeRunner()
    run(project, r)
    assert r.started == ["two", "three"]  # one is narrowed to one.py; the others see the whole project


def test_records_are_keyed_by_workflow_file_and_step(project):
    """Defect 3: two workflows with a step of the same name keep their own records."""
    (project / "other.yml").write_text(CHAIN.replace("./data/a", "./data/x").replace("./data/b", "./data/y")
                                       .replace("./data/c", "./data/z"))
    run(project, FakeRunner())
    run(project, FakeRunner(), "other.yml")
    r = FakeRunner()
    run(project, r)
    assert r.started == []
    keys = sorted(str(p.relative_to(project / ".itwin-run/steps")) for p in (project / ".itwin-run/steps").glob("*/*.json"))
    assert keys == ["chain.yml/one.json", "chain.yml/three.json", "chain.yml/two.json",
                    "other.yml/one.json", "other.yml/three.json", "other.yml/two.json"]


def test_engine_error_fails_the_step_and_the_run(project):
    """Defect 2: an engine's error (GPU refused) is a failed step and a failed run, in the manifest too."""
    r = FakeRunner({"two": engine_error})
    with pytest.raises(StepFailed) as exc:
        run(project, r)
    assert "NVIDIA runtime" in str(exc.value) and exc.value.exit_code == 1
    m = last_manifest(project)
    assert m["status"] == "failed"
    assert [m["steps"][s]["status"] for s in ("one", "two", "three")] == ["done", "failed", "skipped: upstream failed"]
    assert not State(project).record("chain.yml/two")


def test_failure_stops_running_siblings_unless_keep_going(project):
    stopped = []

    def wait_for_stop(job):
        stopped.append(r.stopped.wait(30))  # True: the session stopped it; False: it ran to its end
        return 143

    r = FakeRunner({"a": fails(3), "b": wait_for_stop})
    with pytest.raises(StepFailed) as exc:
        run(project, r, "fork.yml", jobs=2)
    # b was stopped while it ran, or refused before it started (a failed first): never left to run to its end
    assert exc.value.exit_code == 1 and exc.value.code == 3  # the run's code; the step's own
    assert stopped == [True] or (stopped == [] and r.refused_after_cancel == ["b"])
    m = last_manifest(project)
    assert m["steps"]["b"]["status"] == "stopped: another step failed" and m["steps"]["c"]["status"].startswith("skipped")
    r = FakeRunner({"a": fails(3), "b": sleeps(0.3)})
    with pytest.raises(StepFailed):
        run(project, r, "fork.yml", jobs=2, keep_going=True)
    assert last_manifest(project)["steps"]["b"]["status"] == "done"


def test_signal_during_image_resolution(project):
    builder = FakeBuilder(on_resolve=lambda step: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))
    r = FakeRunner()
    with pytest.raises(session.Interrupted) as exc:
        run(project, r, builder=builder)
    assert exc.value.code == 130 and r.started == []
    assert last_manifest(project)["status"] == "interrupted"


def test_signal_between_containers_starts_no_more(project):
    """Defect 1: the signal lands after one step's container ended and before the next one exists."""
    def one(job):
        os.kill(os.getpid(), signal.SIGINT)
        r.stopped.wait(10)  # it ends once the session knows of the signal, whatever the machine's load
        return 0

    r = FakeRunner({"one": one})
    with pytest.raises(session.Interrupted):
        run(project, r)
    assert r.started == ["one"]
    m = last_manifest(project)
    assert m["status"] == "interrupted" and m["steps"]["two"]["status"] == "not run"
    assert m["steps"]["one"]["status"] == "interrupted"  # it ended after the signal: not trusted
    assert not (project / ".itwin-run/steps/chain.yml/one.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_step_that_exits_0_on_an_ending_signal_is_not_complete(project, sig):
    """Defect 1: a cancelled step is never recorded complete, whatever its exit code; a hang-up (a dropped ssh
    session) and SIGQUIT end a run as SIGTERM does, with 128 + the signal."""
    stopped = []

    def stops_cleanly(job):
        os.kill(os.getpid(), sig)  # while it runs, whatever the machine's load
        stopped.append(r.stopped.wait(30))  # True: the signal stopped it
        return 0

    r = FakeRunner({"one": stops_cleanly})
    with pytest.raises(session.Interrupted) as exc:
        run(project, r)
    assert exc.value.code == 128 + sig and stopped == [True]
    m = last_manifest(project)
    assert m["steps"]["one"]["status"] == "interrupted" and m["status"] == "interrupted"
    assert not State(project).record("chain.yml/one")


def test_cancel_before_the_container_exists(project):
    """Defect 1: the signal arrives while the step's thread is about to create its container."""
    class Slow(FakeRunner):
        def run(self, job, on_line):
            os.kill(os.getpid(), signal.SIGINT)  # the container is not created yet when the signal lands
            self.stopped.wait(10)  # the session's interrupt() comes first
            return super().run(job, on_line)

    r = Slow()
    with pytest.raises(session.Interrupted):
        run(project, r)
    assert r.started == [] and r.refused_after_cancel == ["one"]
    assert last_manifest(project)["steps"]["one"]["status"] == "interrupted"


def test_secret_env_vars_are_masked_in_the_manifest_and_log(project):
    (project / "chain.yml").write_text(CHAIN.replace("env: {file: env.txt}}", "env: {file: env.txt, vars: "
                                                     "{API_TOKEN: hunter22, MODE: fast}}}", 1))

    def prints_secret(job):
        return 0

    class Echo(FakeRunner):
        def run(self, job, on_line):
            on_line(f"token is {job.env['API_TOKEN']}" if "API_TOKEN" in job.env else "no token")
            return super().run(job, on_line)

    s = run(project, Echo())
    m = last_manifest(project)
    told = {k: v for k, v in m["steps"]["one"]["env"].items() if k not in THREAD_VARS}  # a test worker's share
    assert told == {"API_TOKEN": "********", "MODE": "fast"}
    log = (s.run_dir / "one.log").read_text()
    assert "hunter22" not in log and "token is ********" in log


def test_another_steps_script_reruns_that_step_and_downstream_only(project):
    run(project, FakeRunner())
    (project / "two.py").write_text("print('edited')\n")

    def writes(job):  # a new output: what reads it reruns too
        (project / "data/b/out.txt").write_text("new\n")
        return 0

    r = FakeRunner({"two": writes})
    run(project, r)
    assert r.started == ["two", "three"]


def test_an_unknown_step_name_suggests_the_closest(project):
    from runner.errors import UsageError

    with pytest.raises(UsageError) as exc:
        run(project, FakeRunner(), only=["tow"])
    assert str(exc.value) == "no step named 'tow' in chain.yml (did you mean 'two'? steps: one, two, three)"


def test_retries_keep_each_failed_attempt_and_never_retry_an_interrupt(project):
    """retries: N runs a failed step again; each failed attempt's log is kept (STEP.attemptN.log) and the manifest
    lists every attempt; the step record is written only by the attempt that succeeded."""
    tries = []

    def flaky(job):
        tries.append(job.step)
        return 3 if len(tries) < 3 else 0

    (project / "chain.yml").write_text(CHAIN.replace('command: "python two.py"', 'command: "python two.py", retries: 2'))
    s = run(project, FakeRunner({"two": flaky}))
    assert s.status["two"] == "done" and len(tries) == 3
    m = last_manifest(project)
    attempts = m["steps"]["two"]["attempts"]
    assert [(a["attempt"], a["status"], a["exit_code"]) for a in attempts] == [(1, "failed", 3), (2, "failed", 3),
                                                                               (3, "done", 0)]
    run_dir = project / ".itwin-run/runs" / m["run_id"]
    assert sorted(p.name for p in run_dir.glob("two*.log")) == ["two.attempt1.log", "two.attempt2.log", "two.log"]
    assert State(project).record("chain.yml/two")

    # --retries over the file: one retry is not enough for a step that fails twice
    tries.clear()
    with pytest.raises(StepFailed):
        run(project, FakeRunner({"two": flaky}), force=[], retries=1)
    assert len(tries) == 2 and len(last_manifest(project)["steps"]["two"]["attempts"]) == 2

    # an interrupted step is not retried
    tries.clear()
    r = FakeRunner()

    def interrupted(job):
        tries.append(job.step)
        os.kill(os.getpid(), signal.SIGINT)
        r.stopped.wait(5)
        return 143
    r.plan = {"two": interrupted}
    with pytest.raises(session.Interrupted):
        run(project, r, force=[])
    assert tries == ["two"] and last_manifest(project)["steps"]["two"]["status"] == "interrupted"


def test_resources_default_step_and_cli_override_reach_the_job(project):
    (project / "chain.yml").write_text("resources: {memory: 1G, time: 30m}\n" + CHAIN.replace(
        'command: "python two.py"', 'command: "python two.py", resources: {cpus: 1.5, memory: 256M}'))
    r = FakeRunner()
    jobs = {}
    r.plan = {name: (lambda job: jobs.setdefault(job.step, job.limits) and 0) for name in ("one", "two", "three")}
    run(project, r)
    assert jobs["one"] == workflow.Limits(memory="1G", time="30m")
    assert jobs["two"] == workflow.Limits(cpus=1.5, memory="256M", time="30m")
    assert jobs["two"].memory_bytes == 256 * 2**20 and jobs["two"].seconds == 1800
    assert last_manifest(project)["steps"]["two"]["limits"] == {"cpus": 1.5, "memory": "256M", "time": "30m"}
    jobs.clear()
    run(project, r, force=[], cpus=2.0, memory="2G")
    assert jobs["two"] == workflow.Limits(cpus=2.0, memory="2G", time="30m")


def test_keep_going_ends_with_the_first_failure_and_says_each_once(project, capsys):
    """Two steps fail under --keep-going: the run ends with the first one's error; the second's is said once."""
    a_failed = threading.Event()

    def a(job):
        a_failed.set()
        return engine_error(job)

    r = FakeRunner({"a": a, "b": lambda job: (a_failed.wait(10), time.sleep(0.3)) and engine_error(job)})
    with pytest.raises(StepFailed) as exc:
        run(project, r, wf="fork.yml", jobs=2, keep_going=True)
    assert exc.value.step == "a"
    err = capsys.readouterr().err
    assert err.count("step 'b' asks for GPUs") == 1 and "step 'a' asks for GPUs" not in err, err


KILLED_RUN = """
import sys, time
from pathlib import Path
from tests.test_session import run
from tests.fakes import FakeRunner
run(Path(sys.argv[1]), FakeRunner({"two": lambda job: time.sleep(120) or 0}))
"""


def test_a_run_whose_process_was_killed_is_crashed_and_its_steps_not_trusted(project):
    """When the runner is killed outright (SIGKILL: no handler runs), the next command that reads the project
    records the run `crashed`, its running step `interrupted`, and the next run reruns that step."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(project)], cwd=Path(__file__).parent.parent)
    for _ in range(300):
        found = list((project / ".itwin-run/runs").glob("*/manifest.json"))
        if found and json.loads(found[0].read_text() or "{}").get("steps", {}).get("two", {}).get("status"):
            break
        time.sleep(0.05)
    child.kill()
    child.wait()
    (path,) = found
    killed = json.loads(path.read_text())
    assert killed["status"] == "running" and killed["steps"]["two"]["status"] == "running"  # as it was left
    assert killed["pid"] == child.pid

    r = FakeRunner()
    run(project, r)
    after = json.loads(path.read_text())
    assert after["status"] == "crashed" and after["steps"]["two"]["status"] == "interrupted"
    assert after["steps"]["one"]["status"] == "done" and f"pid {child.pid}" in after["error"]
    assert r.started == ["two", "three"]  # one had finished; two never did
    assert r.over(killed["run_id"]) and not r.over("20990101-000000-nosuchrun")


def test_status_means_the_latest_run_and_a_wrong_id_names_the_recent_ones(project, capsys):
    from runner.cli import main

    run(project, FakeRunner())
    latest = last_manifest(project)["run_id"]
    capsys.readouterr()
    main(["status", "--root", str(project)])  # no id: the latest run, as `report` does
    assert capsys.readouterr().out.splitlines() == [f"{s}\t{s}\tdone" for s in ("one", "two", "three")]
    for command in ("show", "status", "report"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "nosuch", "--root", str(project)])
        assert exit_info.value.code == 2, command  # a usage problem, as a wrong flag is
        assert capsys.readouterr().err == f"error: no run 'nosuch' in {project} (recent: {latest})\n"


def test_a_write_to_a_read_only_mount_names_the_one_writable_place(project):
    """A step that failed with EROFS got only its own OSError; the reason now names its output dataset."""
    from runner.engines.base import Job, Mount, failure_reason

    mounts = [Mount(project, project, True), Mount(project / "data/a", project / "data/a", False)]
    job = Job(step="gen", image="img", argv=["python", "gen.py"], workdir=project, mounts=mounts, env={}, user="1:1")
    tail = ["Traceback (most recent call last):", "OSError: [Errno 30] Read-only file system: 'out.txt'"]
    assert failure_reason(FakeRunner(), job, 1, tail) == (
        "step 'gen' wrote into a read-only mount (the project and the inputs are read-only): what it keeps goes "
        f"into its output dataset, {project}/data/a (its --output)")
    assert failure_reason(FakeRunner(), job, 1, ["ValueError: no"]) == ""


def test_why_a_step_runs_is_said_by_the_dry_run_the_run_and_the_record(project, capsys):
    run(project, FakeRunner())
    assert {s["why"] for s in last_manifest(project)["steps"].values()} == {"first run"}
    (project / "two.py").write_text("print('edited')\n")
    capsys.readouterr()
    run(project, FakeRunner(), dry_run=True)
    plan = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("one:", "two:", "three:"))]
    assert plan == ["one: up to date", "two: run (changed: two.py)", "three: run (upstream would run)"], plan

    def writes(job):
        (project / "data/b/out.txt").write_text("new\n")
        return 0

    run(project, FakeRunner({"two": writes}))
    assert "run two: changed: two.py" in capsys.readouterr().err
    steps = last_manifest(project)["steps"]
    assert (steps["two"]["why"], steps["three"]["why"]) == ("changed: two.py", "upstream reran: two")
    run(project, FakeRunner(), force=["one"], dry_run=True)
    assert "one: run (--force)" in capsys.readouterr().out
    (project / "chain.yml").write_text(CHAIN.replace('"python three.py"', '"python three.py --fast"'))
    run(project, FakeRunner(), dry_run=True)
    assert "three: run (command or params changed)" in capsys.readouterr().out


def test_a_step_that_writes_nothing_fails_unless_it_allows_it(project):
    """#32: exit 0 with an empty output is a failure (Snakemake's missing outputs): the next step never runs on
    nothing, no record says it is done; `allow_empty_output: true` lets a step write nothing."""
    with pytest.raises(StepFailed) as exc:
        run(project, FakeRunner(writes=False))
    assert exc.value.exit_code == 1 and "step 'one' exited 0 but wrote nothing into its output dataset 'a'" in str(
        exc.value) and "allow_empty_output: true" in str(exc.value)
    m = last_manifest(project)
    assert [m["steps"][s]["status"] for s in ("one", "two", "three")] == ["failed", "skipped: upstream failed",
                                                                          "skipped: upstream failed"]
    assert "wrote nothing" in m["steps"]["one"]["reason"] and not State(project).record("chain.yml/one")
    (project / "chain.yml").write_text(CHAIN.replace('"python one.py",', '"python one.py", allow_empty_output: true,'))
    r = FakeRunner({"one": lambda job: 0, "two": lambda job: 0}, writes=False)
    with pytest.raises(StepFailed, match="step 'two' exited 0 but wrote nothing"):
        run(project, r)
    assert last_manifest(project)["steps"]["one"]["status"] == "done" and State(project).record("chain.yml/one")


@pytest.mark.skipif(os.getuid() != 0, reason="steps run as another uid only when itwin-run runs as root")
def test_outputs_the_steps_cannot_reach_or_make_are_refused_before_anything_starts(project):
    """#32: an output in root's home, run as root, passed the checks, was created, and the step (uid 65534) died of
    PermissionError; the folder was left. Now the run, its dry run and `validate` refuse it, in one line, before
    anything is built, and nothing is created."""
    from runner.errors import UsageError
    from tests.conftest import itwin

    home = Path("/root/itwin-run-test-never-made")
    (project / "chain.yml").write_text(CHAIN.replace("./data/c", str(home)))
    for dry in (False, True):
        r, b = FakeRunner(), FakeBuilder()
        with pytest.raises(UsageError, match="is under /root, which no uid but root can enter in a step's image"):
            run(project, r, builder=b, user="65534:65534", dry_run=dry)
        assert r.started == [] and b.resolved == [] and not home.exists() and not (project / "data").exists()
        assert not (project / ".itwin-run").exists()  # nothing started: no run to record either
    checked = itwin("validate", "chain.yml", cwd=project)
    assert checked.returncode == 2 and "is under /root" in checked.stderr, checked.stderr
    run(project, FakeRunner(), user="0:0")  # root may: the fix the message names
    shutil.rmtree(home)
    (project / "in-the-way").write_text("a file")
    (project / "chain.yml").write_text(CHAIN.replace("./data/c", "./in-the-way/c"))
    with pytest.raises(UsageError, match="in-the-way is a file, not a folder"):
        run(project, FakeRunner(), user="0:0")


def test_a_finished_steps_live_line_goes_when_it_ends(project, monkeypatch):
    """#32: on a terminal, a step's live line stayed until the display's next refresh after the step ended."""
    seen: list[list[str]] = []

    class Live:  # stands for rich's Live display (started only on a terminal): what a refresh would draw
        def __init__(self, executor: LocalExecutor) -> None:
            self.executor = executor

        def refresh(self) -> None:
            seen.append(sorted(self.executor._running))

        def stop(self) -> None:
            pass

    start = LocalExecutor.start

    def on_a_terminal(self, *args):
        start(self, *args)
        self._live = Live(self)

    monkeypatch.setattr(LocalExecutor, "start", on_a_terminal)
    run(project, FakeRunner())
    assert seen == [[], [], []]  # drawn again as each of the three steps ended, without its line


def _remember_at_once(root: str, cache: str, barrier) -> None:
    os.environ["XDG_CACHE_HOME"] = cache
    from runner.inventory import remember

    barrier.wait()
    remember(Path(root))


def test_runs_that_start_together_are_each_remembered_for_prune(tmp_path, monkeypatch):
    """Each run notes its project for `prune` (which keeps what another project's records name): runs that start
    at the same moment, from as many processes, all keep their note."""
    import multiprocessing

    from runner.inventory import projects

    ctx = multiprocessing.get_context("fork")
    roots = [tmp_path / f"p{i}" for i in range(12)]
    for root in roots:
        (root / ".itwin-run").mkdir(parents=True)
    barrier = ctx.Barrier(len(roots))
    procs = [ctx.Process(target=_remember_at_once, args=(str(r), str(tmp_path / "cache"), barrier)) for r in roots]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(roots)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert sorted(projects(roots[0])) == sorted(roots)


def test_projects_that_are_gone_leave_the_list_every_run_reads(tmp_path, monkeypatch):
    """The list of projects grew with every temporary project ever run (9685 names, 103 of them still there, on a
    CI machine): a new project's run drops those whose folder or state was removed, and keeps every other one."""
    from runner.inventory import projects, remember

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    live, removed, cleared, new = (tmp_path / n for n in ("live", "removed", "cleared", "new"))
    for p in (live, removed, cleared, new):
        (p / ".itwin-run").mkdir(parents=True)
    for p in (live, removed, cleared):
        remember(p)
    shutil.rmtree(removed)
    shutil.rmtree(cleared / ".itwin-run")
    remember(new)
    noted = json.loads((tmp_path / "cache" / "itwin-run" / "projects.json").read_text())
    assert sorted(noted) == sorted(str(p) for p in (live, new))
    assert sorted(projects(new)) == sorted([live, new])


def test_cgroup_parents_no_run_will_remove_go_and_a_live_runs_stay(tmp_path, monkeypatch):
    """A killed runner left its containers' cgroup parents (138 in every hierarchy here, after a day of tests): the
    next run removes those empty and idle for a minute, in every v1 hierarchy; a parent with a container's cgroup
    in it, or whose container ended moments ago (its run has yet to read it), stays."""
    from runner import accounting

    monkeypatch.setattr(accounting, "ROOT", tmp_path)
    hour_ago = time.time() - 3600
    for tree in ("memory", "cpu,cpuacct"):
        for name in ("left", "running/container", "just-ended"):
            (tmp_path / tree / "itwin-run" / name).mkdir(parents=True)
        for name in ("left", "running"):
            os.utime(tmp_path / tree / "itwin-run" / name, (hour_ago, hour_ago))
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    accounting.remove_abandoned(1)
    for tree in ("memory", "cpu,cpuacct"):
        assert sorted(p.name for p in (tmp_path / tree / "itwin-run").iterdir()) == ["just-ended", "running"]


def test_the_next_step_is_prepared_while_its_upstream_runs(project):
    """Pipelined start: while a step runs, the engine is handed the jobs that start when it ends (the same jobs)."""
    r = FakeRunner({"one": sleeps(0.3), "two": sleeps(0.3)})
    run(project, r)
    order = [(kind, step) for _, kind, step in r.events]
    assert order.index(("prepare", "two")) < order.index(("end", "one"))  # as one is submitted
    assert order.index(("end", "one")) < order.index(("prepare", "three")) < order.index(("end", "two"))
    assert "one" not in r.prepared  # nothing ran before it: it starts at once
    assert all(r.prepared[s] == r.ran[s] for s in ("two", "three"))


def test_what_is_prepared_for_a_step_that_never_runs(project):
    """A failed upstream step: its next step was prepared but never runs; a step after that is never prepared."""
    r = FakeRunner({"one": fails(3)})
    with pytest.raises(StepFailed):
        run(project, r)
    assert set(r.prepared) == {"two"} and r.started == ["one"]
    r = FakeRunner({"a": sleeps(0.2), "b": sleeps(0.2)})
    run(project, r, "fork.yml", only=["a"])  # --only: nothing else is prepared
    assert r.prepared == {} and r.started == ["a"]
    r = FakeRunner({"a": sleeps(0.2), "b": sleeps(0.2)})
    run(project, r, "fork.yml", jobs=2)  # c waits on both: prepared once, while they run
    assert list(r.prepared) == ["c"] and r.prepared["c"] == r.ran["c"]
