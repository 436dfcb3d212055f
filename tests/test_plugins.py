"""Engines are plugins (fast tier): a package outside this repository that declares an Engine and one entry point
in `itwin_run.engines` runs workflows, shows in `doctor` and `images`, with no edit to the CLI, the session, the
inventory or doctor. (Its engine is the fast tier's fake: this test is about the contract, not about running
containers.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runner.cli import main
from runner.engines import available, engine

PLUGIN = '''
import os
from pathlib import Path

from runner.checks import Check
from runner.engines.base import Engine, Made
from tests.fakes import FakeBuilder, FakeRunner

RAN = []
MADE = [Made("toyengine", "toy/image:1", 1234, 0.0, key="toy/image:1")]


class Runner(FakeRunner):
    def run(self, job, on_line):
        RAN.append(job.step)
        return super().run(job, on_line)


ENGINE = Engine(name="toyengine", builder=lambda **options: FakeBuilder(), runner=Runner,
                made=lambda: list(MADE),
                remove=lambda item: None, doctor=lambda needs_gpu: [Check("toyengine", True, "the toy engine is here")],
                aliases=("toy",), guarded=lambda: [(Path(os.environ["TOY_SOCKET"]), "the toy engine's socket")],
                store=lambda: Path(os.environ["TOY_STORE"]), login="toy login {host}",
                credentials=lambda: set(os.environ.get("TOY_LOGGED_IN", "").split()))
'''


def install(site: Path, package: str, source: str, group: str, entry: str, monkeypatch) -> None:
    """An installed distribution (a dist-info on sys.path) with one entry point, `NAME = package:ATTR`."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A distribution whose one entry point names its Engine."""
    monkeypatch.setenv("TOY_SOCKET", str(tmp_path / "toy-engine/toy.sock"))
    monkeypatch.setenv("TOY_STORE", str(tmp_path / "toy-store"))
    install(tmp_path / "site", "toyengine_plugin", PLUGIN, "itwin_run.engines", "toyengine = toyengine_plugin:ENGINE",
            monkeypatch)
    yield
    sys.modules.pop("toyengine_plugin", None)


def test_an_engine_from_another_package_runs_a_workflow(plugin, tmp_path, capsys):
    assert {"docker", "apptainer", "toyengine"} <= set(available())  # the built-in ones come the same way
    assert engine("toy").name == "toyengine"
    project = tmp_path / "p"
    project.mkdir()
    (project / "env.txt").write_text("")
    (project / "wf.yml").write_text("datasets: {a: {location: ./data/a}}\nsteps:\n"
                                    "  - one: {output: a, command: python one.py, env: {file: env.txt}}\n")
    main(["--engine", "toyengine", str(project / "wf.yml"), "--root", str(project)])
    import toyengine_plugin

    assert toyengine_plugin.RAN == ["one"]
    capsys.readouterr()
    main(["doctor", "--engine", "toyengine"])  # usable: what it needs is its own check (exit 1 would raise)
    assert "ok   toyengine: the toy engine is here" in capsys.readouterr().out.splitlines()
    main(["images", "--root", str(project)])
    assert any(line.startswith("toyengine  toy/image:1") for line in capsys.readouterr().out.splitlines())


def test_images_lists_this_projects_images_in_100_columns_and_all_of_them_with_all(plugin, tmp_path, capsys,
                                                                                  monkeypatch):
    """#32: `images` shows what this project names and what nothing names (what prune removes), not every
    project's on the machine; `--all` shows those too; both in 100 columns, long names cut with a count."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the list of projects that ran here
    monkeypatch.setenv("COLUMNS", "100")
    import toyengine_plugin

    from runner.engines.base import Made

    refs = {}
    for name, steps in (("mine", 6), ("theirs", 1)):
        project = tmp_path / name / ("a-long-folder-name-" * 3)
        project.mkdir(parents=True)
        (project / f"env-{name}.txt").write_text("")
        (project / "wf.yml").write_text("datasets:\n" + "".join(f"  a{i}: {{location: ./data/{i}}}\n" for i in range(
            steps)) + "steps:\n" + "".join(f"  - step-with-a-long-name-{i}: {{output: a{i}, command: python one.py, "
                                            f"env: {{file: env-{name}.txt}}}}\n" for i in range(steps)))
        main(["--engine", "toyengine", str(project / "wf.yml"), "--root", str(project), "-j", "1"])
        refs[name] = (project, json.loads(max((project / ".itwin-run/runs").glob("*/manifest.json")).read_text())[
            "steps"]["step-with-a-long-name-0"]["image"])
    toyengine_plugin.MADE += [Made("toyengine", refs[n][1] + "-x", 1, 0.0, key=n) for n in refs]
    toyengine_plugin.MADE += [Made("toyengine", refs[n][1], 1, 0.0, key=n) for n in refs]
    capsys.readouterr()
    main(["images", "--root", str(refs["mine"][0])])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line for line in out[1:] if line.startswith("toyengine")}
    assert set(rows) == {"toy/image:1", refs["mine"][1], *(refs[n][1] + "-x" for n in refs)}, out
    assert rows[refs["mine"][1]].endswith("-name-0 +5 more"), out  # its own names first, cut from the left
    assert any(line.startswith("and 1 more that only other projects name") for line in out), out
    assert all(len(line) <= 100 for line in out), [line for line in out if len(line) > 100]
    main(["images", "--all", "--root", str(refs["mine"][0])])
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.split()[1:2] == [refs["theirs"][1]])
    assert row.endswith("-long-name-0") and all(len(line) <= 100 for line in out), out


def refusal(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def test_what_an_engine_guards_is_refused_under_every_engine(plugin, tmp_path, capsys):
    """#26: the mount policy asks the engines what to guard (it names none): a dataset at, in or around another
    package's engine's socket is refused whichever engine runs it, in one line at the file's line."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "env.txt").write_text("")
    for where, says in ((tmp_path / "toy-engine/toy.sock", "is the toy engine's socket"),
                        (tmp_path / "toy-engine/toy.sock/inside", "is the toy engine's socket ("),
                        (tmp_path / "toy-engine", "contains " + str(tmp_path / "toy-engine/toy.sock"))):
        (project / "wf.yml").write_text(f"datasets:\n  a: {{location: {where}}}\nsteps:\n"
                                        "  - one: {output: a, command: python one.py, env: {file: env.txt}}\n")
        for args in (["validate", "--engine", "docker"], ["--engine", "toyengine", "--dry-run"]):
            err = refusal([*args, str(project / "wf.yml"), "--root", str(project)], capsys)
            assert "wf.yml:2:" in err and "datasets.a.location: refused: " in err and says in err, err
    main(["validate", "--allow-mount", str(tmp_path / "toy-engine"), str(project / "wf.yml"), "--root", str(project)])
    (project / "wf.yml").write_text("datasets:\n  a: {location: /var/lib/docker/volumes/x}\nsteps:\n"
                                    "  - one: {output: a, command: python one.py, env: {file: env.txt}}\n")
    err = refusal(["validate", "--engine", "toyengine", str(project / "wf.yml"), "--root", str(project)], capsys)
    assert "the Docker daemon's storage" in err, err  # what the built-in engines guard, under another engine


def test_doctor_tells_the_engines_own_login_and_images_its_files(plugin, tmp_path, capsys, monkeypatch):
    """#26: a registry that asks for credentials: doctor's fix is the engine's own login, and its credentials are
    the engine's; `images` shows an engine's image files by name, and where they are."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import toyengine_plugin

    from runner.engines.base import Made

    class Asks(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Asks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    project = tmp_path / "p"
    project.mkdir()
    (project / "wf.yml").write_text(f"datasets: {{a: {{location: ./data/a}}}}\nsteps:\n"
                                    f"  - one: {{output: a, command: python one.py, env: {{image: {host}/ns/one:1}}}}\n")
    try:
        for engine, fix in (("toyengine", f"-> `toy login {host}`"), ("docker", f"-> `docker login {host}`")):
            with pytest.raises(SystemExit):
                main(["doctor", "--engine", engine, str(project / "wf.yml"), "--root", str(project)])
            line = next(x for x in capsys.readouterr().out.splitlines() if f"registry {host}" in x)
            assert line.startswith("FAIL images:") and line.endswith(fix), line
        monkeypatch.setenv("TOY_LOGGED_IN", host)
        main(["doctor", "--engine", "toyengine", str(project / "wf.yml"), "--root", str(project)])
        assert f"ok   images: registry {host} answers, asks for credentials; credentials found" in capsys.readouterr().out
    finally:
        server.shutdown()
    store = tmp_path / "toy-store"
    toyengine_plugin.MADE.append(Made("toyengine", str(store / "one.img"), 1, 0.0, key="one"))
    main(["images", "--root", str(project)])
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("toyengine  one.img ") for line in out), out
    assert f"the toyengine images are files in {store}" in out, out


def test_an_unknown_engine_names_those_installed(plugin, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--engine", "nosuch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown engine 'nosuch': choose one of ") and "toyengine" in err, err


EXECUTOR = '''
from dataclasses import dataclass

from runner.executors.base import setting
from runner.executors.local import LocalExecutor

MADE = []


@dataclass
class ToySettings:
    greeting: str = setting("hi", "what it says first.")
    loud: bool = setting(False, "say it loud.")


class ToyExecutor(LocalExecutor):
    name = "toyexec"
    settings = ToySettings

    @classmethod
    def create(cls, common, settings):
        MADE.append(settings)
        return cls(common.runner, common.jobs)
'''


@pytest.fixture
def executor_plugin(tmp_path, monkeypatch):
    """A distribution whose one entry point names an executor with its own settings."""
    install(tmp_path / "exec-site", "toyexec_plugin", EXECUTOR, "itwin_run.executors",
            "toyexec = toyexec_plugin:ToyExecutor", monkeypatch)
    yield
    sys.modules.pop("toyexec_plugin", None)


def test_an_executor_from_another_package_brings_its_own_flags(executor_plugin, plugin, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # help lines unwrapped
    project = tmp_path / "p"
    project.mkdir()
    (project / "env.txt").write_text("")
    (project / "wf.yml").write_text("datasets: {a: {location: ./data/a}}\nsteps:\n"
                                    "  - one: {output: a, command: python one.py, env: {file: env.txt}}\n")
    main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "toyexec: what it says first." in out and "--greeting" in out and "slurm: default partition." in out
    wf = [str(project / "wf.yml"), "--root", str(project), "--engine", "toyengine"]
    main(["--executor", "toyexec", "--greeting", "hello", "--loud", *wf])
    import toyengine_plugin
    import toyexec_plugin

    assert [(s.greeting, s.loud) for s in toyexec_plugin.MADE] == [("hello", True)] and toyengine_plugin.RAN == ["one"]
    for flags, wrong in ((["--greeting", "x"], "--greeting: only with --executor toyexec"),
                         (["--executor", "toyexec", "--partition", "gpu"], "--partition: only with --executor slurm")):
        with pytest.raises(SystemExit) as exit_info:
            main([*flags, *wf])
        assert exit_info.value.code == 2 and wrong in capsys.readouterr().err
