"""Sweeps (fast tier, the fake engine): the grid's points as steps, each in its own folder, the best linked on,
`parallel`, reruns of only what changed, failing points, and the file:line errors of a bad `sweep:`."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from runner import report, session, workflow
from runner.errors import StepFailed, UsageError, ValidationError
from runner.executors.local import LocalExecutor
from runner.limits import THREAD_VARS
from runner.plan import cpu_share
from runner.sweep import ENV_BEST, ENV_POINT, ENV_SWEEP
from tests.fakes import FakeBuilder, FakeRunner

SWEEP = """
datasets:
  gen: {{location: ./data/gen}}
  logs: {{location: ./data/logs}}
  preds: {{location: ./data/preds}}
steps:
  - train:
      input: gen
      output: logs
      command: itwinai train
      env: {{file: env.txt}}
      params: {{config: ./ai.yml}}
      sweep:
        grid:
          model.init_args.hidden: {hidden}
          model.init_args.lr: [0.003, 0.03]
        best: {{metric: val_loss, mode: {mode}}}
        parallel: 2
  - predict: {{input: logs, output: preds, command: itwinai predict, env: {{file: env.txt}}}}
"""


def write(project: Path, hidden: str = "[16, 64]", mode: str = "min") -> Path:
    (project / "env.txt").write_text("")
    (project / "data" / "gen").mkdir(parents=True, exist_ok=True)
    path = project / "wf.yml"
    path.write_text(SWEEP.format(hidden=hidden, mode=mode))
    return path


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def trains(loss=lambda hidden, lr: hidden * lr, fail: tuple[str, ...] = (), seen: list | None = None):
    """A point's container: writes metrics.json with a val_loss made of its flags."""
    def act(job) -> int:
        if seen is not None:
            seen.append(job)
        if job.env[ENV_POINT] in fail:
            return 3
        out = Path(flag(job.argv, "--output"))
        out.mkdir(parents=True, exist_ok=True)
        hidden, lr = int(flag(job.argv, "--model.init_args.hidden")), float(flag(job.argv, "--model.init_args.lr"))
        value = loss(hidden, lr)
        (out / "metrics.json").write_text(json.dumps({} if value is None else {"val_loss": value}))
        return 0
    return act


def go(project: Path, runner: FakeRunner, jobs: int = 4, **opts) -> session.RunSession:
    w = workflow.load(project / "wf.yml", root=project)
    s = session.RunSession(w, FakeBuilder(), runner, LocalExecutor(runner, jobs), session.RunOptions(jobs=jobs, **opts))
    s.run()
    return s


def sweep_runner(**kw) -> FakeRunner:
    act = trains(**kw)
    runner = FakeRunner()
    runner.plan = _Points(act)
    return runner


class _Points(dict):
    """Every point of `train` gets the same behaviour."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def get(self, step, default=None):
        return self.act if step.startswith("train.") else default


def test_points_are_steps_with_their_flags_folder_and_sweep(tmp_path):
    wf = workflow.load(write(tmp_path), root=tmp_path)
    names = [s.name for s in wf.steps]
    assert names == ["train.hidden-16_lr-0.003", "train.hidden-16_lr-0.03", "train.hidden-64_lr-0.003",
                     "train.hidden-64_lr-0.03", "train", "predict"]
    point = wf.step("train.hidden-64_lr-0.03")
    argv = wf.argv(point)
    assert flag(argv, "--output") == str(tmp_path / "data/logs/hidden-64_lr-0.03")
    assert flag(argv, "--model.init_args.hidden") == "64" and flag(argv, "--config") == "./ai.yml"
    assert workflow.dependencies(wf)["train"] == {s for s in names if s.startswith("train.")}
    assert workflow.dependencies(wf)["predict"] == {"train"}


def test_the_best_point_is_linked_and_the_next_step_reads_it(tmp_path):
    write(tmp_path)
    seen: list = []
    runner = sweep_runner(seen=seen)
    s = go(tmp_path, runner)
    logs = tmp_path / "data" / "logs"
    assert os.readlink(logs / "best") == "hidden-16_lr-0.003"  # 16 * 0.003 is the least
    record = json.loads((logs / "sweep.json").read_text())
    assert record["best"] == "hidden-16_lr-0.003" and len(record["points"]) == 4
    entry = s.manifest["steps"]["train"]
    assert entry["status"] == "done" and entry["best"] == "hidden-16_lr-0.003"
    assert {p["point"]: p["val_loss"] for p in entry["points"]}["hidden-64_lr-0.03"] == pytest.approx(1.92)
    assert runner.started[-1] == "predict" and len(runner.started) == 5
    env = seen[0].env
    assert env[ENV_SWEEP] == "train" and env[ENV_BEST] == "val_loss:min" and env[ENV_POINT].startswith("hidden-")
    assert all(seen[0].image == job.image for job in seen)  # one image for every point


def test_max_mode_picks_the_largest(tmp_path):
    write(tmp_path, mode="max")
    go(tmp_path, sweep_runner())
    assert os.readlink(tmp_path / "data/logs/best") == "hidden-64_lr-0.03"


def test_parallel_bounds_the_points_at_once(tmp_path):
    write(tmp_path)
    now, most, lock = [0], [0], threading.Lock()
    barrier = threading.Event()

    def loss(hidden, lr):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        barrier.wait(0.3)
        with lock:
            now[0] -= 1
        return hidden * lr

    go(tmp_path, sweep_runner(loss=loss), jobs=4)
    assert most[0] == 2  # parallel: 2, though --jobs 4


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def test_points_side_by_side_are_told_their_share_of_the_cpus_and_a_share_reruns_nothing(tmp_path, monkeypatch):
    """parallel: 2 under --jobs 4: two points at a time, each told half the CPUs as its threads (OpenMP, BLAS,
    PyTorch read these); one at a time: nothing said. A share is no input: a rerun with --jobs 1 runs nothing."""
    monkeypatch.delenv("ITWIN_RUN_THREADS", raising=False)  # the test workers' own share (tests/conftest.py)
    write(tmp_path)
    seen: list = []
    go(tmp_path, sweep_runner(seen=seen), jobs=4)
    share = str(max(1, cpus() // 2))
    assert {job.env.get(var) for job in seen for var in THREAD_VARS} == {share}
    again = sweep_runner()
    go(tmp_path, again, jobs=1)
    assert again.started == []
    seen.clear()
    go(tmp_path, sweep_runner(seen=seen), jobs=1, force=[])
    assert len(seen) == 4 and not any(var in job.env for job in seen for var in THREAD_VARS)


def test_a_cpu_limit_or_the_steps_own_setting_comes_before_the_share(tmp_path, monkeypatch):
    monkeypatch.delenv("ITWIN_RUN_THREADS", raising=False)
    path = write(tmp_path)
    text = path.read_text().replace("      params: {config: ./ai.yml}\n",
                                    "      params: {config: ./ai.yml}\n      resources: {cpus: 1.5}\n")
    path.write_text(text)
    seen: list = []
    go(tmp_path, sweep_runner(seen=seen), jobs=1)
    assert {job.env["OMP_NUM_THREADS"] for job in seen} == {"1"}  # one at a time, but 1.5 CPUs: one thread
    path.write_text(text.replace("env: {file: env.txt}\n      params",
                                 "env: {file: env.txt, vars: {OMP_NUM_THREADS: 3}}\n      params", 1))
    seen.clear()
    go(tmp_path, sweep_runner(seen=seen), jobs=4)
    assert {job.env["OMP_NUM_THREADS"] for job in seen} == {"3"} and not any("MKL_NUM_THREADS" in j.env for j in seen)


def test_a_chain_runs_one_at_a_time_whatever_jobs_says(monkeypatch):
    monkeypatch.delenv("ITWIN_RUN_THREADS", raising=False)
    deps = {"a": set(), "b": {"a"}, "c": {"b"}}
    steps = [_Step(n) for n in deps]
    assert cpu_share(steps, deps, jobs=8) is None
    monkeypatch.setenv("ITWIN_RUN_THREADS", "3")  # a machine shared with other work: every step is told 3
    assert cpu_share(steps, deps, jobs=1) == 3
    monkeypatch.setenv("ITWIN_RUN_THREADS", "0")  # not a count: the share as computed
    assert cpu_share(steps, deps, jobs=8) is None
    monkeypatch.delenv("ITWIN_RUN_THREADS")
    wide = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"a"}, "e": {"b", "c", "d"}}
    assert cpu_share([_Step(n) for n in wide], wide, jobs=8) == max(1, cpus() // 3)
    assert cpu_share([_Step(n) for n in wide], wide, jobs=2) == max(1, cpus() // 2)


class _Step:
    def __init__(self, name: str):
        self.name, self.sweep, self.parent = name, None, None


def test_a_rerun_runs_only_new_points_and_nothing_when_nothing_changed(tmp_path):
    write(tmp_path)
    go(tmp_path, sweep_runner())
    again = sweep_runner()
    s = go(tmp_path, again)
    assert again.started == [] and s.status["train"] == "up to date"
    write(tmp_path, hidden="[16, 64, 4]")
    more = sweep_runner()
    s = go(tmp_path, more)
    assert sorted(more.started) == ["predict", "train.hidden-4_lr-0.003", "train.hidden-4_lr-0.03"]
    assert os.readlink(tmp_path / "data/logs/best") == "hidden-4_lr-0.003"


def test_forcing_the_sweep_reruns_its_points(tmp_path):
    write(tmp_path)
    go(tmp_path, sweep_runner())
    again = sweep_runner()
    go(tmp_path, again, force=["train"])
    points = [s.name for s in workflow.load(tmp_path / "wf.yml", root=tmp_path).steps if s.parent]
    assert sorted(again.started) == sorted([*points, "predict"])  # and what reads their dataset


def test_ctrl_c_mid_sweep_and_a_rerun_finishes_only_the_unfinished_points(tmp_path):
    write(tmp_path)
    act = trains()
    runner = FakeRunner()

    def point(job) -> int:
        if job.env[ENV_POINT] == "hidden-64_lr-0.003":
            os.kill(os.getpid(), signal.SIGINT)
            runner.stopped.wait(10)
            return 130
        return act(job)

    runner.plan = _Points(point)
    with pytest.raises(session.Interrupted):
        go(tmp_path, runner, jobs=1)
    assert not (tmp_path / "data/logs/best").exists()  # no pick from a sweep that did not end
    again = sweep_runner()
    go(tmp_path, again)
    done = {"train.hidden-16_lr-0.003", "train.hidden-16_lr-0.03"}
    assert set(again.started) == {s.name for s in workflow.load(tmp_path / "wf.yml", root=tmp_path).steps
                                  if s.parent} - done | {"predict"}
    assert os.readlink(tmp_path / "data/logs/best") == "hidden-16_lr-0.003"


def test_only_the_sweep_runs_its_points(tmp_path):
    write(tmp_path)
    runner = sweep_runner()
    go(tmp_path, runner, only=["train"])
    assert len(runner.started) == 4 and "predict" not in runner.started


def test_a_failed_point_is_never_chosen_and_keep_going_goes_on(tmp_path):
    write(tmp_path)
    runner = sweep_runner(fail=("hidden-16_lr-0.003",))
    with pytest.raises(StepFailed) as exc:
        go(tmp_path, runner, keep_going=True)
    assert exc.value.step == "train.hidden-16_lr-0.003"
    assert os.readlink(tmp_path / "data/logs/best") == "hidden-64_lr-0.003"  # the least of the three left
    assert "predict" in runner.started


def test_a_failed_point_fails_the_run_without_keep_going(tmp_path):
    write(tmp_path)
    runner = sweep_runner(fail=("hidden-16_lr-0.003",))
    with pytest.raises(StepFailed):
        go(tmp_path, runner, jobs=1)
    assert "predict" not in runner.started


def test_no_point_with_the_metric_fails_the_sweep(tmp_path):
    write(tmp_path)
    runner = sweep_runner(loss=lambda hidden, lr: None)
    with pytest.raises(StepFailed) as exc:
        go(tmp_path, runner)
    assert exc.value.step == "train" and "val_loss" in str(exc.value) and exc.value.exit_code == 1
    assert "predict" not in runner.started and not (tmp_path / "data/logs/best").exists()


BAD = {
    ("model.init_args.hidden: [16, 64]", "model.init_args.hidden: []"):
        ("sweep.grid.model.init_args.hidden", "at least 1"),
    ("mode: min", "mode: least"): ("sweep.best.mode", "'min' or 'max'"),
    ("params: {config: ./ai.yml}", "params: {config: ./ai.yml, model.init_args.lr: 1}"):
        ("sweep.grid.model.init_args.lr", "also in params"),
    ("model.init_args.hidden: [16, 64]", f"model.init_args.hidden: {list(range(51))}"):
        ("sweep.grid", "102 points, more than 100 (--max-points"),
    ("parallel: 2", "paralel: 2"): ("sweep.paralel", "unknown field"),
    ("      output: logs\n      command: itwinai train", "      command: itwinai train"):
        ("train.sweep", "needs an output dataset"),
}


def one_problem(project: Path, text: str, edit: tuple[str, str], said: tuple[str, str]) -> None:
    """The workflow `text` edited so is refused in one line naming the file, its line, the field and the words."""
    assert edit[0] in text
    (project / "bad.yml").write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(ValidationError) as exc:
        workflow.load(project / "bad.yml", root=project)
    where, words = said
    problems = exc.value.problems
    assert len(problems) == 1 and problems[0].startswith(f"{project / 'bad.yml'}:"), problems
    assert where in problems[0] and words in problems[0], problems[0]


@pytest.mark.parametrize("edit", BAD, ids=[new for _, new in BAD])
def test_a_bad_sweep_is_one_line_with_file_line_and_field(tmp_path, edit):
    one_problem(tmp_path, write(tmp_path).read_text(), edit, BAD[edit])


def test_more_points_than_allowed_need_max_points(tmp_path):
    write(tmp_path)
    with pytest.raises(ValidationError, match="4 points, more than 3"):
        workflow.load(tmp_path / "wf.yml", root=tmp_path, max_points=3)
    assert len(workflow.load(tmp_path / "wf.yml", root=tmp_path, max_points=4).steps) == 6


class ArrayExecutor(LocalExecutor):
    """The local executor taking a sweep's points together, as SLURM does (one job array)."""

    arrays = True

    def __init__(self, runner, jobs):
        super().__init__(runner, jobs)
        self.arrays_given: list[tuple[list[str], int | None]] = []

    def submit_array(self, subs, parallel):
        self.arrays_given.append(([s.step.name for s in subs], parallel))
        return [self.submit(s) for s in subs]


def test_an_executor_that_takes_arrays_gets_the_points_together(tmp_path):
    write(tmp_path)
    runner = sweep_runner()
    executor = ArrayExecutor(runner, 4)
    s = session.RunSession(workflow.load(tmp_path / "wf.yml", root=tmp_path), FakeBuilder(), runner, executor,
                           session.RunOptions(jobs=4))
    s.run()
    points = [n for n in s.manifest["steps"] if n.startswith("train.")]
    assert executor.arrays_given == [(points, 2)] and len(points) == 4  # one call, the sweep's `parallel`
    assert os.readlink(tmp_path / "data" / "logs" / "best") == "hidden-16_lr-0.003"
    assert runner.started[-1] == "predict"


class DetachingExecutor(ArrayExecutor):
    """Takes every step at once, ordered by handles, and leaves them to run on (SLURM --detach): nothing runs here."""

    orders_itself = True

    def __init__(self, runner, jobs):
        super().__init__(runner, jobs)
        self.given: list[tuple[str, list[str]]] = []

    def submit(self, sub):
        self.given.append((sub.step.name, list(sub.after)))
        return f"job-{sub.step.name}"

    def has_room(self, active):
        return True

    def detached(self, active):
        return bool(active)


def test_a_detached_sweep_leaves_its_pick_to_a_job_after_its_points(tmp_path):
    """Nobody stays to pick the best point: the sweep's own step is submitted too, after every point of the array,
    and what reads the sweep waits on that step."""
    write(tmp_path)
    runner = sweep_runner()
    executor = DetachingExecutor(runner, 1)
    s = session.RunSession(workflow.load(tmp_path / "wf.yml", root=tmp_path), FakeBuilder(), runner, executor,
                           session.RunOptions())
    s.run()
    points = [n for n in s.manifest["steps"] if n.startswith("train.")]
    assert executor.arrays_given == [(points, 2)]
    assert executor.given == [*((p, []) for p in points), ("train", [f"job-{p}" for p in points]),
                              ("predict", ["job-train"])]
    assert s.manifest["status"] == "submitted" and runner.started == []
    assert not {"image", "argv", "mounts"} & set(s.manifest["steps"]["train"])  # the pick runs no container


def test_the_report_has_a_table_of_points_with_the_best_marked(tmp_path):
    write(tmp_path)
    s = go(tmp_path, sweep_runner())
    page = report.render(s.manifest, s.wf.edges(), tmp_path / "r.html")
    table = page.split('<table class="sweep">')[1].split("</table>")[0]
    assert table.count("<tr>") == 5 and "<th>model.init_args.lr</th>" in table and "<th>val_loss</th>" in table
    best = [row for row in table.split("<tr>") if 'class="best"' in row]
    assert len(best) == 1 and "hidden-16_lr-0.003" in best[0] and "<td>0.048</td>" in best[0]


def test_itwinai_takes_dotted_settings_as_lightningcli_does():
    from itwinai.config import ItwinaiError, dotted_settings, set_dotted

    got = dotted_settings(["--model.init_args.hidden", "16", "--trainer.max_epochs=3", "--data.init_args.name", "a b"])
    assert got == {"model.init_args.hidden": 16, "trainer.max_epochs": 3, "data.init_args.name": "a b"}
    conf = {"model": {"class_path": "M", "init_args": {"hidden": 8, "lr": 0.1}}}
    set_dotted(conf, "model.init_args.hidden", 16, "x.yml")
    assert conf["model"]["init_args"] == {"hidden": 16, "lr": 0.1}
    for bad in (["--hidden", "16"], ["--model.init_args.hidden"], ["16"]):
        with pytest.raises(ItwinaiError):
            dotted_settings(bad)


ADAPTIVE = """        grid:
          model.init_args.hidden: {hidden}
          model.init_args.lr: [0.003, 0.03]
"""
OPTUNA = """        optuna:
          trials: {trials}
          seed: 0
          space:
            model.init_args.hidden: {{choice: [16, 64]}}
            model.init_args.lr: {{loguniform: [0.001, 0.1]}}
"""


def adaptive(project: Path, trials: int = 4) -> Path:
    path = write(project)
    path.write_text(path.read_text().replace(ADAPTIVE.format(hidden="[16, 64]"), OPTUNA.format(trials=trials)))
    return path


def study_trials(project: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (journal,) = (project / ".itwin-run" / "studies").glob("train-*.journal")
    storage = JournalStorage(JournalFileBackend(str(journal)))
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return optuna.load_study(study_name=name, storage=storage).trials


def test_an_adaptive_sweep_asks_each_wave_once_the_last_was_told(tmp_path):
    """optuna: 4 trials, parallel 2: trials 0 and 1 run first; 2 and 3 are asked only once 0 and 1 were told their
    val_loss; every trial's values are in its flags and in sweep.json, and the best of them goes on."""
    adaptive(tmp_path)
    asked: dict[str, int] = {}
    seen: list = []

    def loss(hidden, lr):
        asked[f"{hidden}-{lr}"] = sum(t.state.name == "COMPLETE" for t in study_trials(tmp_path))
        return hidden * lr

    s = go(tmp_path, sweep_runner(loss=loss, seen=seen), jobs=4)
    trials = study_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(asked.values()) == [0, 0, 2, 2]  # the second wave saw the first told
    for t, job in zip(trials, sorted(seen, key=lambda j: j.step), strict=True):
        assert job.step == f"train.trial-{t.number}"
        assert flag(job.argv, "--model.init_args.lr") == str(t.params["model.init_args.lr"])
        assert t.value == pytest.approx(t.params["model.init_args.hidden"] * t.params["model.init_args.lr"])
        assert 0.001 <= t.params["model.init_args.lr"] <= 0.1 and t.params["model.init_args.hidden"] in (16, 64)
    best = min(trials, key=lambda t: t.value)
    assert os.readlink(tmp_path / "data/logs/best") == f"trial-{best.number}"
    table = json.loads((tmp_path / "data/logs/sweep.json").read_text())
    assert [p["params"] for p in table["points"]] == [t.params for t in trials]
    assert s.manifest["steps"]["train"]["best"] == f"trial-{best.number}"


def test_an_adaptive_sweep_resumes_its_study(tmp_path):
    """A rerun runs nothing; more trials run only the new ones, asked with what the study learnt; a dry run asks
    nothing."""
    adaptive(tmp_path)
    go(tmp_path, sweep_runner())
    again = sweep_runner()
    go(tmp_path, again)
    assert again.started == [] and len(study_trials(tmp_path)) == 4
    adaptive(tmp_path, trials=6)
    go(tmp_path, sweep_runner(), dry_run=True)
    assert len(study_trials(tmp_path)) == 4
    more = sweep_runner()
    go(tmp_path, more)
    assert sorted(more.started) == ["predict", "train.trial-4", "train.trial-5"]
    assert [t.state.name for t in study_trials(tmp_path)] == ["COMPLETE"] * 6


def test_a_failed_trial_is_told_it_failed_and_never_chosen(tmp_path):
    adaptive(tmp_path)
    with pytest.raises(StepFailed):
        go(tmp_path, sweep_runner(fail=("trial-1",)), keep_going=True)
    states = [t.state.name for t in study_trials(tmp_path)]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert os.readlink(tmp_path / "data/logs/best") != "trial-1"


ADAPTIVE_BAD = {
    ("trials: 4", "trials: 0"): ("sweep.optuna.trials", "greater than or equal to 1"),
    ("{choice: [16, 64]}", "{choice: [16, 64], uniform: [1, 2]}"): ("sweep.optuna.space.model.init_args.hidden",
                                                                    "give one of loguniform"),
    ("{loguniform: [0.001, 0.1]}", "{loguniform: [0, 0.1]}"): ("sweep.optuna.space.model.init_args.lr.loguniform",
                                                               "above 0"),
    ("{loguniform: [0.001, 0.1]}", "{uniform: [0.1, 0.1]}"): ("sweep.optuna.space.model.init_args.lr",
                                                            "LOW must be below HIGH"),
    ("        optuna:\n", "        grid: {x: [1]}\n        optuna:\n"): ("train.sweep", "give one of grid"),
    ("trials: 4", "trials: 101"): ("sweep.optuna", "101 points, more than 100"),
}


@pytest.mark.parametrize("edit", ADAPTIVE_BAD, ids=[new for _, new in ADAPTIVE_BAD])
def test_a_bad_adaptive_sweep_is_one_line_with_file_line_and_field(tmp_path, edit):
    one_problem(tmp_path, adaptive(tmp_path).read_text(), edit, ADAPTIVE_BAD[edit])


def test_an_adaptive_sweep_is_refused_where_its_waves_cannot_be_asked(tmp_path):
    from runner import cwl
    from runner.executors.cwl import CwlExecutor
    from runner.executors.slurm import SlurmExecutor, SlurmSettings

    path = adaptive(tmp_path)
    path.write_text(path.read_text() + "workflowFileCWL: wf.cwl\n")
    w = workflow.load(path, root=tmp_path)
    for executor, said in ((SlurmExecutor(SlurmSettings(detach=True)), "--detach: an adaptive sweep"),
                           (CwlExecutor(FakeRunner(), w), "does not run through cwltool")):
        with pytest.raises(UsageError, match=said):
            session.RunSession(w, FakeBuilder(), FakeRunner(), executor, session.RunOptions()).run()
    with pytest.raises(UsageError, match=r"wf.yml:\d+:\d+: train.sweep.optuna: an adaptive sweep has no CWL form"):
        cwl.export(w, {s.name: "img" for s in w.steps}, tmp_path / "cwl")
