"""--cwl tells each tool what a classical run tells its step: its share of the CPUs as thread counts (the machine's
CPUs over the steps side by side, or ITWIN_RUN_THREADS), carried to cwltool in the overrides, without losing the
tool's own EnvVarRequirement (which an override replaces). The real cwltool run is tests/test_cwl.py's."""

from __future__ import annotations

from pathlib import Path

import yaml

from runner import session, workflow
from runner.executors.cwl import CwlExecutor
from tests.fakes import FakeBuilder, FakeRunner

WF = """datasets:
  a: {location: ./data/a}
  b: {location: ./data/b}
steps:
  - one:
      input: null
      output: a
      command: python one.py
      env: {file: req.txt}
  - two:
      input: a
      output: b
      command: python two.py
      env: {file: req.txt, vars: {GREETING: hello, OMP_NUM_THREADS: 2}}
workflowFileCWL: wf.cwl
"""
CWL = """cwlVersion: v1.2
class: Workflow
inputs: []
outputs: []
steps:
  one: {run: one.cwl, in: {}, out: [out]}
  two: {run: two.cwl, in: {prev: one/out}, out: [out]}
"""
TOOL = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  - class: EnvVarRequirement
    envDef:
      - {envName: FROM_TOOL, envValue: kept}
      - {envName: MKL_NUM_THREADS, envValue: "4"}
baseCommand: [python, -c, pass]
inputs:
  prev: {type: "Directory?"}
outputs:
  out: {type: Directory, outputBinding: {glob: .}}
"""


def overrides(tmp_path: Path, capsys) -> dict[str, dict[str, str]]:
    """Each tool's EnvVarRequirement in the overrides a --cwl dry run prints."""
    (tmp_path / "wf.yml").write_text(WF)
    (tmp_path / "req.txt").write_text("")
    (tmp_path / "wf.cwl").write_text(CWL)
    (tmp_path / "one.cwl").write_text(TOOL.replace("requirements:", "requirements: []\nx:"))
    (tmp_path / "two.cwl").write_text(TOOL)
    w = workflow.load(tmp_path / "wf.yml", root=tmp_path)
    runner = FakeRunner()
    session.RunSession(w, FakeBuilder(), runner, CwlExecutor(runner, w), session.RunOptions(dry_run=True)).run()
    ov = yaml.safe_load(capsys.readouterr().out.split("# overrides.yml\n")[1].split("# job.json")[0])
    return {Path(uri).name: o["requirements"].get("EnvVarRequirement", {}).get("envDef", {})
            for uri, o in ov["cwltool:overrides"].items()}


def test_cwl_tools_are_told_their_thread_share_and_keep_their_own_variables(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ITWIN_RUN_THREADS", "3")
    env = overrides(tmp_path, capsys)
    threads = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "NUMEXPR_NUM_THREADS": "3"}
    assert env["one.cwl"] == threads
    # the step's own OMP_NUM_THREADS: no share from itwin-run; the tool's own variables kept, the workflow's on top
    assert env["two.cwl"] == {"FROM_TOOL": "kept", "MKL_NUM_THREADS": "4", "GREETING": "hello", "OMP_NUM_THREADS": "2"}


def test_one_step_at_a_time_gets_no_thread_share(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ITWIN_RUN_THREADS", raising=False)
    env = overrides(tmp_path, capsys)
    assert env["one.cwl"] == {}
