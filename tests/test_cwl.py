"""CWL: export to CWL run by plain cwltool, and --cwl mode, with the real cwltool and daemon (and Apptainer)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import itwin

pytestmark = pytest.mark.docker
CWLTOOL = str(Path(sys.executable).parent / "cwltool")


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def classical(toy, docker_client) -> dict[str, bytes]:
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    out = outputs(toy / "data")
    shutil.rmtree(toy / "data")
    return out


def export(toy: Path) -> Path:
    res = itwin("export-cwl", "workflow.yml", "-o", "cwl", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [f"cwl/{f}" for f in
                                  ("workflow.cwl", "generate.cwl", "square.cwl", "summarize.cwl")]
    return toy / "cwl" / "workflow.cwl"


def test_export_validates_and_plain_cwltool_matches_classical(toy, classical, no_leftovers):
    wf = export(toy)
    assert "conda" not in wf.read_text()
    val = subprocess.run([CWLTOOL, "--validate", str(wf)], capture_output=True, text=True)
    assert val.returncode == 0 and "is valid CWL" in val.stdout + val.stderr
    out = toy / "cwl-out"
    res = subprocess.run([CWLTOOL, "--quiet", "--outdir", str(out), "--tmpdir-prefix", f"{toy}/cwl-tmp/",
                          "--tmp-outdir-prefix", f"{toy}/cwl-tmp/", str(wf)], capture_output=True, text=True, cwd=toy)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout)
    for dataset in ("raw", "squares", "summary"):
        got = outputs(Path(result[dataset]["path"]))
        want = {k.split("/", 1)[1]: v for k, v in classical.items() if k.startswith(dataset + "/")}
        assert got == want, dataset


def with_cwl_section(toy: Path) -> None:
    export(toy)
    (toy / "workflow.yml").write_text((toy / "workflow.yml").read_text() + "\nworkflowFileCWL: cwl/workflow.cwl\n")


def test_cwl_mode_outputs_land_in_datasets(toy, classical, no_leftovers):
    with_cwl_section(toy)
    res = itwin("--cwl", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr[-2000:]
    assert outputs(toy / "data") == classical
    assert "cwltool | sum=55" in res.stdout
    assert len(list((toy / ".itwin-run" / "runs").glob("*/cwltool.log"))) == 1  # kept with the run's record


def test_a_cwl_run_with_provenance_has_a_crate_that_links_cwltools_own(toy, docker_client, tmp_path, validate_crate,
                                                                       no_leftovers):
    res = itwin("--provenance", "workflow.yml", cwd=toy)
    assert res.returncode == 2 and "--provenance: only with --executor cwl" in res.stderr
    with_cwl_section(toy)
    res = itwin("--cwl", "--provenance", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr[-2000:]
    ro = next((toy / ".itwin-run" / "runs").glob("*/cwl/provenance"))
    assert "Research Object of CWL workflow run" in (ro / "bag-info.txt").read_text()
    assert (ro / "snapshot" / "square.cwl").is_file()  # cwltool's own snapshot of the tools it ran
    linked_as = []
    for crate, data in ((tmp_path / "crate", []), (tmp_path / "with-data", ["--include-data"])):
        res = itwin("crate", "-o", str(crate), *data, cwd=toy)
        assert res.returncode == 0, res.stderr
        verdict = validate_crate(crate)
        assert verdict["passed"] and verdict["statistics"]["total_failed_checks"] == 0, verdict.get("issues")
        graph = {e["@id"]: e for e in json.loads((crate / "ro-crate-metadata.json").read_text())["@graph"]}
        run = next(e for e in graph.values() if e["@id"].startswith("#run-"))
        linked = graph[run["subjectOf"]["@id"]]
        assert linked["conformsTo"] == {"@id": "https://w3id.org/cwl/prov/0.6.0"} and linked["about"] == {"@id": run["@id"]}
        assert {a for a in graph if a.startswith("#action-")} == {"#action-generate", "#action-square",
                                                                  "#action-summarize"}
        cwl_file = next(e for e in graph.values() if e["@id"].endswith("/cwl/workflow.cwl"))
        assert graph[cwl_file["programmingLanguage"]["@id"]]["alternateName"] == "CWL"
        linked_as.append(linked["@id"])
    assert linked_as == [ro.as_uri() + "/", "cwlprov/"]  # referenced by default, copied in with the data
    assert not (tmp_path / "crate" / "cwlprov").exists()
    assert (tmp_path / "with-data" / "cwlprov" / "snapshot" / "square.cwl").is_file()


def test_cwl_mode_with_apptainer(toy, classical, apptainer_env, no_leftovers):
    with_cwl_section(toy)
    res = itwin("--engine", "apptainer", "--cwl", "workflow.yml", cwd=toy, env=apptainer_env)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    got = outputs(toy / "data")
    # with Apptainer, cwltool keeps a tool's output at its own path, which the toy records in args.json
    assert {k: v for k, v in got.items() if k != "raw/args.json"} == {k: v for k, v in classical.items()
                                                                       if k != "raw/args.json"}
    assert json.loads(got["raw/args.json"])["label"] == json.loads(classical["raw/args.json"])["label"]


def test_cwl_validation_error_is_one_clear_message(toy, docker_client):
    with_cwl_section(toy)
    tool = toy / "cwl" / "square.cwl"
    tool.write_text(tool.read_text().replace("class: CommandLineTool", "class: CommandLineTool\nbogusField: 1"))
    res = itwin("--cwl", "workflow.yml", cwd=toy)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CWL validation failed:") and "bogusField" in last
    assert "Traceback" not in res.stderr


def test_cwl_step_failure_is_surfaced(toy, docker_client, no_leftovers):
    with_cwl_section(toy)
    (toy / "steps" / "square.py").write_text("import sys\nprint('about to fail')\nsys.exit(7)\n")
    res = itwin("--cwl", "workflow.yml", cwd=toy)
    assert res.returncode == 1
    assert "step 'square': cwltool reports permanentFail" in res.stderr  # the step, not the tool, is named
    assert "about to fail" in res.stdout
    assert not (toy / "data" / "summary" / "summary.txt").exists()


def test_cwl_mode_needs_the_cwl_key(toy):
    res = itwin("--cwl", "workflow.yml", cwd=toy)
    assert res.returncode == 2 and "workflowFileCWL: --cwl needs the CWL workflow file" in res.stderr


def test_cwl_mode_applies_resources_and_refuses_what_cwltool_cannot_take(toy, classical, no_leftovers):
    """resources: cpus and memory reach cwltool as ResourceRequirement, enforced (--strict-*-limit), and a step
    without them is not held to cwltool's defaults; a time limit and retries are refused, not dropped."""
    with_cwl_section(toy)
    wf = toy / "workflow.yml"
    text = wf.read_text()
    wf.write_text(text.replace("        prefix: ./envs/.venv-square\n",
                               "        prefix: ./envs/.venv-square\n      resources: {cpus: 1, memory: 300M}\n"))
    res = itwin("--cwl", "workflow.yml", cwd=toy, env={"ITWIN_RUN_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert outputs(toy / "data") == classical
    log = next((toy / ".itwin-run" / "runs").glob("*/cwltool.log")).read_text()
    square = log.split("[job square]")[1]
    assert "--cpus=1 " in square.replace("\\\n", " ") and "--memory=300m" in square.lower(), square[:3000]
    generate = log.split("[job generate]")[1].split("[job square]")[0]
    assert f"--cpus={os.cpu_count()}" in generate and "--memory=256m" not in generate.lower(), generate[:3000]
    # the threads each is told, as in a classical run: its CPU limit, else the share ITWIN_RUN_THREADS gives
    assert "--env=OMP_NUM_THREADS=1" in square and "--env=OMP_NUM_THREADS=2" in generate, generate[:3000]
    wf.write_text(text.replace("        prefix: ./envs/.venv-square\n",
                               "        prefix: ./envs/.venv-square\n      resources: {time: 30s}\n"))
    timed = itwin("--cwl", "workflow.yml", cwd=toy)
    assert timed.returncode == 2 and "resources.time (square) does not apply to --cwl" in timed.stderr
    wf.write_text(text)
    retried = itwin("--cwl", "--retries", "1", "workflow.yml", cwd=toy)
    assert retried.returncode == 2 and "retries do not apply to --cwl" in retried.stderr


SWEEP = """
datasets:
  scores: {location: ./data/scores}
  chosen: {location: ./data/chosen}
steps:
  - train:
      input: null
      output: scores
      command: python ./steps/point.py
      env: {file: ./envs/requirements.txt}
      params: {scale: 3}
      sweep:
        grid: {a: [1, 2], b: [xy, x]}
        best: {metric: loss, mode: min}
  - read:
      input: scores
      output: chosen
      command: python ./steps/read.py
      env: {file: ./envs/requirements.txt}
"""
POINT = """import argparse, json, pathlib
p = argparse.ArgumentParser()
for k in ("--output", "--scale", "--a", "--b"):
    p.add_argument(k)
a = p.parse_args()
out = pathlib.Path(a.output)
(out / "metrics.json").write_text(json.dumps({"loss": int(a.scale) * int(a.a) * len(a.b)}))
(out / "args.txt").write_text(f"{a.scale} {a.a} {a.b}")
"""
READ = """import argparse, pathlib
p = argparse.ArgumentParser()
p.add_argument("--input")
p.add_argument("--output")
a = p.parse_args()
src = pathlib.Path(a.input)
names = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.is_symlink())
(pathlib.Path(a.output) / "chosen.txt").write_text((src / "best" / "args.txt").read_text() + " of " + " ".join(names))
"""


def sweep_project(toy: Path) -> Path:
    (toy / "sweep.yml").write_text(SWEEP)
    (toy / "steps" / "point.py").write_text(POINT)
    (toy / "steps" / "read.py").write_text(READ)
    return toy / "sweep.yml"


def test_a_sweep_is_a_cwl_scatter_that_cwltool_and_cwl_mode_run(toy, docker_client, no_leftovers):
    sweep_project(toy)
    res = itwin("sweep.yml", cwd=toy)  # classical: what the CWL runs must match
    assert res.returncode == 0, res.stderr[-2000:]
    classical = outputs(toy / "data")
    assert os.readlink(toy / "data/scores/best") == "a-1_b-x"
    shutil.rmtree(toy / "data")
    shutil.rmtree(toy / ".itwin-run")

    res = itwin("export-cwl", "sweep.yml", "-o", "cwl", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [f"cwl/{f}.cwl" for f in ("workflow", "train", "train-point", "train-best", "read")]
    sub = (toy / "cwl/train.cwl").read_text()
    assert "scatter:" in sub and "flat_crossproduct" in sub and "ScatterFeatureRequirement" in sub
    out = toy / "cwl-out"
    plain = subprocess.run([CWLTOOL, "--quiet", "--outdir", str(out), "--tmpdir-prefix", f"{toy}/cwl-tmp/",
                            "--tmp-outdir-prefix", f"{toy}/cwl-tmp/", "cwl/workflow.cwl"],
                           capture_output=True, text=True, cwd=toy)
    assert plain.returncode == 0, plain.stderr[-2000:]
    result = json.loads(plain.stdout)
    scores = Path(result["scores"]["path"])
    assert os.readlink(scores / "best") == "a-1_b-x"
    assert json.loads((scores / "sweep.json").read_text())["best"] == "a-1_b-x"
    for name in ("scores", "chosen"):  # every point's files, the pick and the step after it, as classical
        got = {k: v for k, v in outputs(Path(result[name]["path"])).items() if not k.endswith("sweep.json")}
        assert got == {k.split("/", 1)[1]: v for k, v in classical.items()
                       if k.startswith(name + "/") and not k.endswith("sweep.json")}, name
    assert (Path(result["chosen"]["path"]) / "chosen.txt").read_text() == \
        "3 1 x of a-1_b-x a-1_b-xy a-2_b-x a-2_b-xy"

    (toy / "sweep.yml").write_text(SWEEP + "workflowFileCWL: cwl/workflow.cwl\n")
    res = itwin("--cwl", "sweep.yml", cwd=toy)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert outputs(toy / "data") == classical  # sweep.json too: the run's pick rewrote it as classical runs do
    assert not list((toy / "data").glob("*.before-*"))  # nothing was there to keep
    steps = json.loads(next((toy / ".itwin-run" / "runs").glob("*/manifest.json")).read_text())["steps"]
    assert {n: s["status"] for n, s in steps.items()} == {
        **{f"train.{p}": "done" for p in ("a-1_b-xy", "a-1_b-x", "a-2_b-xy", "a-2_b-x")},
        "train": "done", "read": "done"}
    assert steps["train"]["best"] == "a-1_b-x"
    again = itwin("--cwl", "sweep.yml", cwd=toy)
    assert again.returncode == 0 and "cwltool |" not in again.stdout, again.stdout[-2000:]
