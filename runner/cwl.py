"""CWL documents: the overrides that give a workflow's CWL tools their step images, the job order, and the export
of classical workflows to CWL (running them is runner/executors/cwl.py).

The CWL files stay engine-neutral: itwin-run injects each tool's image (DockerRequirement.dockerImageId, the
content-hashed tag or SIF) through cwltool's --overrides, matching CWL step ids to classical step names."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from runner.errors import UsageError
from runner.limits import Limits
from runner.workflow import StepSpec, Workflow, writers

CWL_KEY = "workflowFileCWL"
PROVENANCE = "provenance"  # cwltool's research object of a --cwl --provenance run: RUN_DIR/cwl/provenance


def cwltool() -> str:
    exe = Path(sys.executable).parent / "cwltool"
    return str(exe) if exe.exists() else (shutil.which("cwltool") or "cwltool")


def _steps(cwl: dict[str, Any]) -> dict[str, Any]:
    steps = cwl.get("steps") or {}
    if isinstance(steps, list):
        return {str(s.get("id", "")).lstrip("#"): s.get("run") for s in steps if isinstance(s, dict)}
    return {k: (v.get("run") if isinstance(v, dict) else None) for k, v in steps.items()}


def _tools(path: Path) -> list[Path]:
    """The tool files a step's `run` names: itself, or every tool of its sub-workflow (a sweep's points and pick),
    which a requirement of the sub-workflow would not reach (their own DockerRequirement wins over it)."""
    path = path.resolve()
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return [path]  # cwltool says what is wrong with it
    if not isinstance(doc, dict) or doc.get("class") != "Workflow":
        return [path]
    return [path, *(t for run in _steps(doc).values() if isinstance(run, str) for t in _tools(path.parent / run))]


def overrides(wf: Workflow, cwl_file: Path, images: dict[str, str], at_dataset: bool = True,
              gpus: dict[str, Any] | None = None, limits: dict[str, Limits] | None = None,
              env: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """cwltool overrides: each tool run by a step named like a classical step gets that step's image; `env`, what
    itwin-run tells a step beside the step's own env.vars (its share of the CPUs as thread counts). An override
    replaces the tool's own EnvVarRequirement, so that one's variables are carried over (the thread counts a tool
    sets itself win over itwin-run's; the workflow's env.vars win over the tool's)."""
    try:
        cwl = yaml.safe_load(cwl_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{cwl_file}: cannot read the CWL workflow: {str(exc).splitlines()[0]}") from None
    if not isinstance(cwl, dict) or cwl.get("class") != "Workflow":
        raise UsageError(f"{cwl_file}: not a CWL Workflow (class: Workflow)")
    by_name = {s.name: s for s in wf.steps}
    out: dict[str, Any] = {}
    unknown = []
    for step_id, run in _steps(cwl).items():
        step = by_name.get(step_id)
        if step is None:
            unknown.append(step_id)
            continue
        if not isinstance(run, str):
            raise UsageError(f"{cwl_file}: step {step_id}: put its tool in a file of its own (run: tool.cwl) so that "
                            "itwin-run can give it the step image")
        # a sweep's points are staged apart by cwltool: none of them writes at the dataset's own path
        told = (env or {}).get(step.name, {})
        for tool in _tools(cwl_file.parent / run):
            reqs = requirements(wf, step, images[step.name], at_dataset and not step.sweep,
                                (gpus or {}).get(step.name, step.gpus), (limits or {}).get(step.name), overriding=True,
                                env={**told, **_own_env(tool)})
            out[tool.as_uri()] = {"requirements": reqs}
    if unknown:
        raise UsageError(f"{cwl_file}: CWL steps {', '.join(unknown)} match no step of {wf.path.name} "
                        f"({', '.join(by_name)}): name them alike")
    return {"$namespaces": {"cwltool": "http://commonwl.org/cwltool#"}, "cwltool:overrides": out}


def _own_env(tool: Path) -> dict[str, str]:
    """The variables of a tool's own EnvVarRequirement (a map, or a list of envName/envValue)."""
    try:
        doc = yaml.safe_load(tool.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    reqs = doc.get("requirements") if isinstance(doc, dict) else None
    if isinstance(reqs, list):
        reqs = {r.get("class"): r for r in reqs if isinstance(r, dict)}
    found = reqs.get("EnvVarRequirement") if isinstance(reqs, dict) else None
    defs = found.get("envDef") if isinstance(found, dict) else None
    if isinstance(defs, list):
        return {str(d.get("envName")): str(d.get("envValue")) for d in defs if isinstance(d, dict)}
    return {str(k): str(v) for k, v in defs.items()} if isinstance(defs, dict) else {}


def requirements(wf: Workflow, step: StepSpec, image: str, at_dataset: bool = True, gpus: Any = None,
                 limits: Limits | None = None, overriding: bool = False,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    docker: dict[str, Any] = {"dockerImageId": image}
    if step.output and at_dataset:  # the output at the dataset's host path, as in classical runs (MLflow URIs stay valid)
        docker["dockerOutputDirectory"] = str(wf.datasets[step.output])
    reqs: dict[str, Any] = {"DockerRequirement": docker}
    env = {**(env or {}), **{k: str(v) for k, v in step.env.vars.items()}}
    if env:
        reqs["EnvVarRequirement"] = {"envDef": env}
    gpus = step.gpus if gpus is None else gpus
    if gpus:
        count = 1 if gpus == "all" else (gpus if isinstance(gpus, int) else len(gpus))
        reqs["cwltool:CUDARequirement"] = {"cudaVersionMin": "11.0", "cudaComputeCapability": "3.0",
                                           "cudaDeviceCountMin": count}
    limits = step.limits if limits is None else limits
    resources: dict[str, Any] = {}
    if limits.cpus:
        resources.update(coresMin=limits.cpus, coresMax=limits.cpus)
    if limits.memory:
        mib = math.ceil((limits.memory_bytes or 0) / 2**20)
        resources.update(ramMin=mib, ramMax=mib)
    if resources:
        reqs["ResourceRequirement"] = resources
    if limits.time and not overriding:  # cwltool's overrides cannot carry ToolTimeLimit (cwltool issue 1754)
        reqs["ToolTimeLimit"] = {"timelimit": math.ceil(limits.seconds or 0)}
    return reqs


def job_order(wf: Workflow) -> dict[str, Any]:
    """The workflow file's CWL keys; File/Directory paths resolve against the workflow file's directory."""
    def absolute(v: Any) -> Any:
        if isinstance(v, dict):
            out = {k: absolute(x) for k, x in v.items()}
            if v.get("class") in ("File", "Directory") and isinstance(v.get("path"), str):
                out["path"] = str((wf.path.parent / v["path"]).resolve())
            return out
        return [absolute(x) for x in v] if isinstance(v, list) else v

    return {k: absolute(v) for k, v in wf.extra.items() if k != CWL_KEY}


# ---------------------------------------------------------------- export


def _cwl_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string"


def _id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def export(wf: Workflow, images: dict[str, str], outdir: Path) -> list[Path]:
    """A CWL v1.2 Workflow plus one CommandLineTool per step; argv and outputs as the classical run has them."""
    adaptive = next((s for s in wf.steps if s.sweep and s.sweep.optuna), None)
    if adaptive:
        raise UsageError(f"{wf.path}:{adaptive.at}: {adaptive.name}.sweep.optuna: an adaptive sweep has no CWL form "
                         "(a scatter is fixed in advance): export a grid")
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    wf_inputs: dict[str, Any] = {}
    wf_steps: dict[str, Any] = {}
    producers = writers(wf.steps)
    for step in (s for s in wf.steps if not s.parent):  # a sweep's points are its scatter
        tool, step_in = tool_for(wf, step, images[step.name], producers, wf_inputs)
        tools = sweep_tools(step, tool, step_in, images[step.name]) if step.sweep else {step.name: tool}
        for name, doc in tools.items():
            written.append(_write(outdir / f"{name}.cwl", doc))
        wf_steps[step.name] = {"run": f"{step.name}.cwl", "in": step_in, "out": ["output"] if step.output else []}
    workflow = {
        "cwlVersion": "v1.2", "class": "Workflow",
        "doc": f"Exported by itwin-run from {wf.path.name}",
        **({"requirements": {"SubworkflowFeatureRequirement": {}}} if any(s.sweep for s in wf.steps) else {}),
        "inputs": wf_inputs,
        "outputs": {s.output: {"type": "Directory", "outputSource": f"{s.name}/output"}
                    for s in wf.steps if s.output and not s.parent},
        "steps": wf_steps,
    }
    return [_write(outdir / "workflow.cwl", workflow), *written]


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text("#!/usr/bin/env cwl-runner\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


# What a sweep's pick runs in the step's image (which has Python): each point's folder copied under its name, the best
# linked as `best`, and sweep.json, as itwin-run's own pick writes them. argv: METRIC MODE POINTS(JSON) FOLDER...
PICK = """\
import json, math, os, shutil, sys
metric, mode, points, folders = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
for row, folder in zip(points, folders, strict=True):
    shutil.copytree(folder, row["point"], symlinks=True)
    try:
        value = float(json.load(open(os.path.join(row["point"], "metrics.json")))[metric])
    except (OSError, ValueError, KeyError, TypeError):
        value = math.nan
    row.update(finished=True, **{metric: value if math.isfinite(value) else None})
scored = [row for row in points if row[metric] is not None]
if not scored:
    sys.exit(f"no point wrote {metric} to its metrics.json")
best = (min if mode == "min" else max)(scored, key=lambda row: row[metric])["point"]
os.symlink(best, "best")
record = {"metric": metric, "mode": mode, "best": best, "points": points}
open("sweep.json", "w").write(json.dumps(record, indent=2) + "\\n")
"""


def sweep_tools(step: StepSpec, tool: dict[str, Any], step_in: dict[str, Any],
                image: str) -> dict[str, dict[str, Any]]:
    """A sweep as a CWL sub-workflow, by file name: its points a scatter (the grid's cartesian product, in the order
    itwin-run runs them) of the step's tool, and a pick that gathers them into the output dataset."""
    assert step.sweep
    name, grid = step.name, step.sweep.grid or {}
    keys = {key: f"sweep_{_id(key)}" for key in grid}
    sub_inputs: dict[str, Any] = {k: {"type": tool["inputs"][k]["type"]} for k in step_in}  # what the step is given
    for i, (key, inp) in enumerate(keys.items()):  # the grid's values follow the params, as in the classical argv
        types = {_cwl_type(v) for v in grid[key]}
        typ = types.pop() if len(types) == 1 else "string"
        tool["inputs"][inp] = {"type": typ, "inputBinding": {"position": 10_000 + i, "prefix": f"--{key}"}}
        sub_inputs[inp] = {"type": {"type": "array", "items": typ},
                           "default": [v if typ != "string" else str(v) for v in grid[key]]}
    best = step.sweep.best
    rows = [{"point": p.slug, "params": p.values} for p in step.points]
    pick = {"cwlVersion": "v1.2", "class": "CommandLineTool", "doc": f"The best point of sweep {name}",
            "requirements": {"DockerRequirement": {"dockerPull": image}},
            "baseCommand": ["python3", "-c", PICK], "arguments": [best.metric, best.mode, json.dumps(rows)],
            "inputs": {"points": {"type": "Directory[]", "inputBinding": {"position": 1}}},
            "outputs": {"output": {"type": "Directory", "outputBinding": {"glob": "$(runtime.outdir)"}}}}
    sub = {"cwlVersion": "v1.2", "class": "Workflow", "doc": f"Sweep {name}: every point, then the best",
           "requirements": {"ScatterFeatureRequirement": {}},
           "inputs": sub_inputs,
           "outputs": {"output": {"type": "Directory", "outputSource": f"{name}-best/output"}},
           "steps": {f"{name}-points": {"run": f"{name}-point.cwl", "in": {k: k for k in sub_inputs},
                               "scatter": list(keys.values()), "scatterMethod": "flat_crossproduct", "out": ["output"]},
                     f"{name}-best": {"run": f"{name}-best.cwl", "in": {"points": f"{name}-points/output"},
                                           "out": ["output"]}}}
    return {name: sub, f"{name}-point": tool, f"{name}-best": pick}


def tool_for(wf: Workflow, step: StepSpec, image: str, writers: dict[str, str],
             wf_inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    argv = shlex.split(step.command)
    inputs: dict[str, Any] = {}
    step_in: dict[str, Any] = {}
    base: list[str] = []
    pos = 0
    for token in argv:  # files of the project named in the command become File inputs (CWL stages them)
        local = (wf.root / token).resolve()
        if not base or not local.is_file() or wf.root not in local.parents:
            if inputs:
                raise UsageError(f"{wf.path}:{step.at}: {step.name}.command: export needs the project files "
                                f"after the fixed words of the command ({token!r} follows one)")
            base.append(token)
            continue
        pos += 1
        key = f"file_{pos}"
        inputs[key] = {"type": "File", "inputBinding": {"position": pos}}
        wf_key = _id(f"{step.name}_{key}")
        wf_inputs[wf_key] = {"type": "File", "default": {"class": "File", "location": local.as_uri()}}
        step_in[key] = wf_key
    for i, ds in enumerate(step.inputs):
        pos += 1
        key = f"input_{i}"
        inputs[key] = {"type": "Directory", "inputBinding": {"position": pos, "prefix": "--input"}}
        if ds in writers:
            step_in[key] = f"{writers[ds]}/output"
        else:
            wf_inputs[_id(ds)] = {"type": "Directory", "default": {"class": "Directory",
                                                                    "location": wf.datasets[ds].as_uri()}}
            step_in[key] = _id(ds)
    arguments = []
    if step.output:
        pos += 1
        arguments.append({"position": pos, "prefix": "--output", "valueFrom": "$(runtime.outdir)"})
    for key, value in step.params.items():
        pos += 1
        name = f"param_{_id(key)}"
        if isinstance(value, list):
            typ: Any = {"type": "array", "items": _cwl_type(value[0]) if value else "string",
                        "inputBinding": {"prefix": f"--{key}"}}
            inputs[name] = {"type": typ, "default": value, "inputBinding": {"position": pos}}
        elif value is None:
            continue
        else:
            inputs[name] = {"type": _cwl_type(value), "default": value,
                            "inputBinding": {"position": pos, "prefix": f"--{key}"}}
    reqs = requirements(wf, step, image)
    reqs["DockerRequirement"]["dockerPull"] = reqs["DockerRequirement"].pop("dockerImageId")
    tool = {"cwlVersion": "v1.2", "class": "CommandLineTool", "doc": f"Step {step.name} of {wf.path.name}",
            "requirements": reqs, "baseCommand": base, "arguments": arguments, "inputs": inputs,
            "outputs": {"output": {"type": "Directory", "outputBinding": {"glob": "$(runtime.outdir)"}}}
            if step.output else {}}
    if "cwltool:CUDARequirement" in reqs:
        tool = {"$namespaces": {"cwltool": "http://commonwl.org/cwltool#"}, **tool}
    return tool, step_in
