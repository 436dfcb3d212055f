"""Site profiles (fast tier: the plugin engine of test_plugins, no daemon): `--site NAME` (or ITWIN_RUN_SITE) gives
the engine, the executor and its defaults, itwin-run's environment, folders every step gets and the registry, from
sites/NAME.yml in the project or ~/.config/itwin-run/sites/; the command line wins; a bad profile is one line per
problem at its file and line. The real thing, as a non-root user on SLURM and Apptainer: tests/test_hpc_user.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from runner.cli import main
from tests.test_plugins import plugin  # noqa: F401 (the fixture)

WORKFLOW = ("datasets:\n  a: {location: ./data/a}\n  b: {location: ./data/b}\nsteps:\n"
            "  - one: {output: a, command: python one.py, env: {file: env.txt}}\n"
            "  - two: {input: a, output: b, command: python two.py, env: {file: env.txt}, gpus: 1}\n")


def project(tmp_path: Path, profile: str, name: str = "lab") -> Path:
    root = tmp_path / "p"
    (root / "sites").mkdir(parents=True)
    (root / "env.txt").write_text("")
    (root / "wf.yml").write_text(WORKFLOW)
    (root / "sites" / f"{name}.yml").write_text(profile)
    return root


def failing(args: list[str], capsys, code: int = 2) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == code and "Traceback" not in err, err
    return err.splitlines()


def test_a_site_gives_engine_executor_defaults_environment_and_binds(plugin, tmp_path, capsys, monkeypatch):  # noqa: F811
    shared = tmp_path / "shared-data"
    shared.mkdir()
    monkeypatch.delenv("ITWIN_RUN_SITE_PROBE", raising=False)
    root = project(tmp_path, f"""engine: toyengine
executor: slurm
slurm:
  account: site-acct
  qos: high
  gres: tpu
  cpus_per_gpu: 8
  setup: ["module load apptainer", "echo site setup ran"]
environment: {{ITWIN_RUN_SITE_PROBE: from-site}}
binds: [{shared}]
""")
    main(["--site", "lab", "--dry-run", "--account", "cli-acct", str(root / "wf.yml"), "--root", str(root)])
    scripts = capsys.readouterr().out.split("#!/bin/bash")[1:]
    assert len(scripts) == 2, scripts
    for script in scripts:
        lines = script.splitlines()
        assert "#SBATCH --account=cli-acct" in lines and "#SBATCH --qos=high" in lines, script  # the flag wins
        last_option = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
        assert lines[last_option + 1:last_option + 3] == ["module load apptainer", "echo site setup ran"], script
        assert lines[last_option + 3].startswith("exec ") and "-m runner.stepjob" in lines[last_option + 3], script
    gpu = next(s for s in scripts if "itwin-two" in s)
    assert "#SBATCH --gres=tpu:1" in gpu and "#SBATCH --cpus-per-gpu=8" in gpu and "cpus-per-task" not in gpu, gpu
    assert os.environ["ITWIN_RUN_SITE_PROBE"] == "from-site"
    monkeypatch.setenv("ITWIN_RUN_SITE", "lab")  # the same profile from the environment; the flags win again
    main(["--executor", "local", str(root / "wf.yml"), "--root", str(root)])
    manifest = json.loads(max((root / ".itwin-run/runs").glob("*/manifest.json")).read_text())
    import toyengine_plugin

    assert manifest["site"] == "lab" and manifest["executor"] == "local" and toyengine_plugin.RAN == ["one", "two"]
    for step in ("one", "two"):
        assert {"source": str(shared), "target": str(shared), "read_only": True} in manifest["steps"][step]["mounts"]


def test_a_bad_profile_is_one_line_per_problem_at_its_line(plugin, tmp_path, capsys):  # noqa: F811
    root = project(tmp_path, """engine: toyengine
executer: slurm
slurm:
  partiton: batch
  cpus_per_gpu: eight
setup: []
environment: {1BAD: x}
binds: [relative/dir, /etc, /no/such/folder]
""")
    lines = failing(["validate", "--site", "lab", str(root / "wf.yml"), "--root", str(root)], capsys)
    assert all(re.match(r"^error: .+/sites/lab\.yml:\d+:\d+: \S+: .+", line) for line in lines), lines
    said = "\n".join(lines)
    for line, field, what in ((2, "executer", "did you mean 'executor'?"), (6, "setup", "an installed executor"),
                              (7, "environment.1BAD", "is not a variable's name"),
                              (4, "slurm.partiton", "did you mean 'partition'?"), (5, "slurm.cpus_per_gpu", "")):
        assert re.search(rf"lab\.yml:{line}:\d+: {re.escape(field)}: .*{re.escape(what)}", said), said
    fixed = root / "sites" / "lab.yml"
    fixed.write_text(fixed.read_text().replace("executer", "executor").replace("setup: []\n", "")
                     .replace("{1BAD: x}", "{}").replace("  partiton: batch\n  cpus_per_gpu: eight\n", ""))
    said = "\n".join(failing(["validate", "--site", "lab", str(root / "wf.yml"), "--root", str(root)], capsys))
    assert "binds[0]: 'relative/dir': an absolute path" in said and "binds[1]: refused: /etc is a system location" \
        in said and "binds[2]: /no/such/folder: no such folder here" in said, said
    with_break = "slurm:\n  setup: [\"module load x\\nrm -rf /\"]\n"
    fixed.write_text(with_break)
    said = "\n".join(failing(["validate", "--site", "lab", str(root / "wf.yml"), "--root", str(root)], capsys))
    assert re.search(r"lab\.yml:2:\d+: slurm\.setup\[0\]: a line break is not allowed here", said), said


def test_a_profile_is_found_in_the_project_then_in_the_users_settings(plugin, tmp_path, capsys, monkeypatch):  # noqa: F811
    root = project(tmp_path, "engine: toyengine\n")
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    (line,) = failing(["validate", "--site", "elsewhere", str(root / "wf.yml"), "--root", str(root)], capsys)
    assert line == (f"error: --site elsewhere: no elsewhere.yml in {root}/sites or {config}/itwin-run/sites "
                    "(`itwin-run init` writes an example: sites/example.yml)")
    (config / "itwin-run" / "sites").mkdir(parents=True)
    (config / "itwin-run" / "sites" / "elsewhere.yml").write_text("engine: nosuch\n")
    (line,) = failing(["validate", "--site", "elsewhere", str(root / "wf.yml"), "--root", str(root)], capsys)
    assert line.startswith("error: unknown engine 'nosuch': choose one of "), line
    main(["doctor", "--site", "lab", "--root", str(root)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ok   site: site lab ({root}/sites/lab.yml): engine toyengine", out
    assert "ok   toyengine: the toy engine is here" in out, out


def test_init_writes_an_example_profile_that_checks(plugin, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("APPTAINER_TMPDIR", "/tmp")  # what it sets: kept out of the other tests
    main(["init", str(tmp_path / "new")])
    new = tmp_path / "new"
    assert "module load apptainer" in (new / "sites" / "example.yml").read_text()
    args = ["--site", "example", "--engine", "toyengine", str(new / "workflow.yml"), "--root", str(new)]
    main(["validate", *args])
    capsys.readouterr()
    main(["--dry-run", *args])
    assert capsys.readouterr().out.count("\nmodule load apptainer\nexec ") == 2
