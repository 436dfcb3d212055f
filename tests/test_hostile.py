"""Hostile input: generated malformed workflow files each give exit code 2 and file:line messages, no traceback."""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.cli import main

VALID = {
    "datasets": {"raw": {"location": "./data/raw"}, "out": {"location": "./data/out"}},
    "steps": [
        {"make": {"input": None, "output": "raw", "command": "python make.py", "env": {"file": "env.txt"},
                  "params": {"n": 3}}},
        {"use": {"input": "raw", "output": "out", "command": "python use.py", "env": {"file": "env.txt"}}},
    ],
}
WRONG = st.one_of(st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), min_size=1),
                  st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), min_size=1), st.booleans())
ODD = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
LINE = re.compile(r"^error: .+:\d+:\d+: \S.*: .+$")  # error: FILE:LINE:COLUMN: FIELD: message
PYTHONISH = re.compile(r"\b[A-Za-z]+(Error|Exception)\b|pydantic|errors\.pydantic\.dev|<class |Traceback")


def mutate(data: st.DataObject) -> str:
    doc = copy.deepcopy(VALID)
    step = doc["steps"][data.draw(st.integers(0, 1))]
    name = next(iter(step))
    kind = data.draw(st.sampled_from(["yaml", "type", "missing", "dataset", "unicode", "huge", "top"]))
    if kind == "yaml":
        junk = data.draw(st.text(max_size=20))
        return data.draw(st.sampled_from([f"steps: [{{\n  - {junk}", f"datasets:\n\t- {junk}: [",
                                          f"steps:\n  - a: {{command: \"{junk}\n", f"key: value\n  bad: [{junk}"]))
    if kind == "type":
        field = data.draw(st.sampled_from(["command", "input", "output", "params", "env"]))
        value = data.draw(WRONG)
        if field in ("input", "output") and isinstance(value, list):
            value = [value]  # a list of names is valid; a list of lists is not
        if field == "params" and isinstance(value, dict):
            value = [value]  # a mapping of names to numbers is valid params; a list of them is not
        step[name][field] = value
    elif kind == "missing":
        target = data.draw(st.sampled_from(["command", "steps", "location"]))
        if target == "command":
            del step[name]["command"]
        elif target == "steps":
            del doc["steps"]
        else:
            del doc["datasets"]["raw"]["location"]
    elif kind == "dataset":
        bad = data.draw(st.text(min_size=1, max_size=10).filter(lambda t: t not in doc["datasets"]))
        step[name][data.draw(st.sampled_from(["input", "output"]))] = bad
    elif kind == "unicode":
        odd = data.draw(ODD.filter(lambda t: not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", t)))
        if data.draw(st.booleans()):
            doc["steps"][0] = {odd: step[name]} if step is doc["steps"][0] else doc["steps"][0]
            doc["steps"][1] = {odd: step[name]} if step is doc["steps"][1] else doc["steps"][1]
        else:
            doc["datasets"][odd] = doc["datasets"].pop("raw")
    elif kind == "huge":
        which = data.draw(st.sampled_from(["location", "gpus", "command"]))
        if which == "location":
            doc["datasets"]["out"]["location"] = "./" + "x" * data.draw(st.integers(5000, 20000))
        elif which == "gpus":
            step[name]["gpus"] = data.draw(st.integers(10**6, 10**40))
        else:
            step[name]["command"] = "python " + "y" * 70000
    else:
        doc = data.draw(st.sampled_from([[doc], "just text", 42, {"steps": []}, {"steps": {"a": 1}}]))
    return yaml.safe_dump(doc, allow_unicode=True)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_workflows_exit_2_with_file_line(data, capsys):
    text = mutate(data)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "env.txt").write_text("")
        wf = Path(tmp, "wf.yml")
        wf.write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit) as exit_info:
            main(["validate", str(wf), "--root", tmp])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (text[:500], err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(f"error: {wf}:") and LINE.match(ln) for ln in lines), err
    assert "Traceback" not in err
    assert not PYTHONISH.search(err), err  # no class names, no pydantic URLs: words a user can act on


@pytest.mark.parametrize("argv, said", [
    (["run", "--nosuch", "w.yml"], "error: No such option: --nosuch"),
    (["validate"], "error: Missing argument 'workflow'; see `itwin-run validate --help`"),
    (["--jobs", "x", "w.yml"], "error: Invalid value for '--jobs'"),
    (["--engine", "podman", "load", "/tmp"], "the command comes first: `itwin-run load [OPTIONS] ...`"),
])
def test_command_line_mistakes_are_one_line_in_itwin_runs_voice(argv, said, capsys):
    """typer's own `Usage: … Error: …` block was three shapes of message: now one line, `error: …`, with where to
    look, and for a command given after options the order it goes in."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], err


def test_doctor_fails_only_what_the_run_needs(monkeypatch, tmp_path):
    """`doctor` printed `FAIL apptainer` (or docker, podman) and then `usable`, exit 0: a FAIL now always means the
    run cannot go, and what it does not need is info."""
    from runner import doctor

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # no daemon answers there
    monkeypatch.setenv("PATH", str(tmp_path))  # nor any apptainer, podman or SLURM
    checks, usable = doctor.diagnose("apptainer", "local", False, [])
    assert not usable and any(c.area == "apptainer" and c.ok is False for c in checks)
    failed = {c.area for c in checks if c.ok is False}
    assert failed <= {"apptainer", "local", "images"}, [c.line() for c in checks]
    docker = next(c for c in checks if c.area == "docker")
    assert docker.line().startswith("info docker: no Docker daemon answers") and "(not needed for this run)" in \
        docker.line(), docker.line()
