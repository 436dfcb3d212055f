"""`itwin-run crate`: a run as a Workflow Run RO-Crate (the Provenance Run Crate profile), made with `rocrate`.

The workflow file is the main entity (a ComputationalWorkflow with its steps as HowToSteps, each step's command a
SoftwareApplication); every container a step ran (each attempt of a retried step, each point of a sweep) is a
CreateAction with its image, times, exit status, params and datasets; itwin-run's own run is an OrganizeAction."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from runner.cwl import CWL_KEY, PROVENANCE
from runner.errors import UsageError, UserError
from runner.report import mlflow_run
from runner.workflow import Workflow

PROFILES = {"https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
            "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
            "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
            "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate"}
HASH_LIMIT = 64 * 2**20  # files up to this size get a sha256; larger ones are listed by size only
FILE_LIMIT = 1000  # files listed per dataset
STATUS = {"done": "CompletedActionStatus", "failed": "FailedActionStatus"}
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
# Terms the Workflow Run Crate profiles add to RO-Crate 1.1's context, and the Bioschemas type as they read it.
TERMS = {"wfrun": WFRUN, **{t: WFRUN + t for t in ("containerImage", "ContainerImage", "DockerImage", "SIFImage",
                                                   "registry", "tag", "resourceUsage", "exitCode")},
         "ComputationalWorkflow": "https://bioschemas.org/ComputationalWorkflow"}
CWLPROV = "https://w3id.org/cwl/prov/0.6.0"  # the research object profile cwltool --provenance writes
MODEL = re.compile(r"registered model '([^']+)' version (\d+)")


def write(where: Path, run_id: str | None, out: Path, include_data: bool) -> None:
    """The crate of a run of the project at `where` (default: its latest run), and one line saying what it holds."""
    from runner import ui
    from runner import workflow as wfmod
    from runner.state import State

    state = State(where)
    m = state.manifest(run_id)
    if m.get("status") in ("running", "submitted"):
        raise UsageError(f"run {m['run_id']} has not ended ({m['status']}): make its crate once it has")
    wf = wfmod.load(m["workflow"], m.get("root"), allowed_mounts=m.get("allowed_mounts") or [])
    counts = make(m, wf, out.resolve(), include_data, state.runs / m["run_id"] / "cwl" / PROVENANCE)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    ui.say(f"crate of run {m['run_id']}: {out} ({counts['steps']} steps, {counts['actions']} container runs, "
           f"{counts['entities']} entities, {size / 1e6:.1f} MB)")


def make(manifest: dict[str, Any], wf: Workflow, out: Path, include_data: bool,
         cwlprov: Path | None = None) -> dict[str, int]:
    """Write the crate of this run to `out` (a folder, or FILE.zip); returns entity counts for the message.
    `cwlprov`: where cwltool's research object of a --cwl run would be."""
    from rocrate.model.computerlanguage import ComputerLanguage
    from rocrate.rocrate import ROCrate

    crate = ROCrate(version="1.1")  # what the Provenance Run Crate 0.5 profile builds on
    crate.metadata.extra_terms.update(TERMS)
    crate.name = f"itwin-run {manifest['run_id']} of {wf.path.name}"
    crate.description = f"A run of {wf.path.name} by itwin-run ({manifest.get('status')})"
    crate.license = "https://spdx.org/licenses/CC-BY-4.0"
    for url, name in PROFILES.items():
        _entity(crate, url, {"@type": "CreativeWork", "name": name, "version": url[-3:]})
    crate.root_dataset["conformsTo"] = [{"@id": url} for url in PROFILES]

    lang = crate.add(ComputerLanguage(crate, "#itwin-run-workflow", properties={
        "name": "itwin-run workflow (YAML)", "url": {"@id": "https://pypi.org/project/itwin-run/"}}))
    workflow = crate.add_workflow(wf.path, dest_path=wf.path.name, main=True, lang=lang,
                                  properties={"name": wf.path.name, "@type": [
                                      "File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]})
    engine = _entity(crate, "#itwin-run", {"@type": "SoftwareApplication", "name": "itwin-run",
                                           "softwareVersion": manifest.get("version", "")})
    datasets = {name: _dataset(crate, name, path, include_data) for name, path in wf.datasets.items()}
    tools, howto = _steps(crate, wf, workflow)
    controls = _containers(crate, manifest, wf, tools, howto, datasets)
    written = {s.output for s in wf.steps if s.output}
    run = _entity(crate, f"#run-{manifest['run_id']}", {
        "@type": "CreateAction", "name": f"run {manifest['run_id']} of {wf.path.name}", "instrument": workflow,
        "startTime": _iso(manifest.get("started")), "endTime": _iso(manifest.get("ended")),
        "actionStatus": "CompletedActionStatus" if manifest.get("status") == "succeeded" else "FailedActionStatus",
        "object": [datasets[d] for s in wf.steps for d in s.inputs if d not in written],
        "result": [datasets[d] for d in sorted(written)]})
    crate.root_dataset["mentions"] = [run]
    if manifest.get("executor") == "cwl":
        _cwl(crate, wf, workflow, run, cwlprov, include_data)
    _entity(crate, f"#organize-{manifest['run_id']}", {
        "@type": "OrganizeAction", "name": f"itwin-run {manifest['run_id']} ({manifest.get('engine')} engine, "
                                           f"{manifest.get('executor')} executor)",
        "instrument": engine, "object": controls, "result": run,
        "startTime": _iso(manifest.get("started")), "endTime": _iso(manifest.get("ended"))})
    if out.suffix == ".zip":
        crate.write_zip(str(out))
    else:
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"{out}: not empty: name a new folder or a .zip")
        crate.write(str(out))
    return {"steps": len(tools), "actions": len(controls), "entities": len(crate.get_entities())}


def _entity(crate, ident: str, props: dict[str, Any]) -> Any:
    from rocrate.model.contextentity import ContextEntity

    return crate.add(ContextEntity(crate, ident, properties=props))


def _steps(crate, wf: Workflow, workflow) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each step of the file (a sweep once, not its points): its command as a SoftwareApplication with its datasets
    and params as FormalParameters, and a HowToStep; the workflow's parts, steps, inputs and outputs."""
    params: dict[str, Any] = {}

    def formal(ident: str, name: str, kind: str) -> Any:
        if ident not in params:
            params[ident] = crate.add_formal_parameter(name, kind, identifier=ident)
        return params[ident]

    tools, howto = {}, {}
    for position, step in enumerate(s for s in wf.steps if not s.parent):
        inputs = [formal(f"#{step.name}-in-{d}", d, "Dataset") for d in step.inputs]
        inputs += [formal(f"#{step.name}-param-{k}", k, "Text") for k in
                   [*step.params, *(step.sweep.keys if step.sweep else ())]]
        outputs = [formal(f"#{step.name}-out-{step.output}", step.output, "Dataset")] if step.output else []
        tools[step.name] = _entity(crate, f"#tool-{step.name}", {"@type": "SoftwareApplication", "name": step.command,
                                                                 "input": inputs, "output": outputs})
        howto[step.name] = _entity(crate, f"#step-{step.name}", {"@type": "HowToStep", "name": step.name,
                                                                 "position": str(position),
                                                                 "workExample": tools[step.name]})
    workflow["hasPart"] = list(tools.values())
    workflow["step"] = list(howto.values())
    workflow["input"] = [params[k] for k in params if "-in-" in k or "-param-" in k]
    workflow["output"] = [params[k] for k in params if "-out-" in k]
    return tools, howto


def _containers(crate, manifest, wf: Workflow, tools, howto, datasets) -> list[Any]:
    """A CreateAction for every container the run ran, each with the ControlAction that ran it (returned)."""
    controls = []
    for name, info in manifest.get("steps", {}).items():
        if name not in (s.name for s in wf.steps) or not info.get("start") or "argv" not in info:
            continue  # not run in this run (up to date, skipped), or a sweep's pick (no container)
        step = wf.step(name)
        user = step.parent or name
        for n, attempt in enumerate([*info.get("attempts", [])[:-1], info] if info.get("attempts") else [info], 1):
            suffix = f"-attempt{n}" if info.get("attempts") else ""
            action = _action(crate, manifest, step, info, attempt, tools[user], datasets, suffix)
            controls.append(_entity(crate, f"#control-{name}{suffix}", {
                "@type": "ControlAction", "name": f"orchestrate {name}{suffix}", "instrument": howto[user],
                "object": action, "actionStatus": action["actionStatus"]}))
    return controls


def _cwl(crate, wf: Workflow, workflow, run, cwlprov: Path | None, include_data: bool) -> None:
    """A --cwl run: the CWL workflow that cwltool ran, part of the main workflow; and, where the run kept one
    (`--provenance`), cwltool's own research object (CWLProv, a BagIt folder with a snapshot of every CWL file, its
    PROV graphs and copies of the data) as a Dataset about the run: copied in with the data, else referenced."""
    from rocrate.model.computerlanguage import cwl

    source = (wf.root / str(wf.extra.get(CWL_KEY, ""))).resolve()
    lang = crate.add(cwl(crate))
    crate.add_file(source.as_uri(), properties={
        "@type": ["File", "SoftwareSourceCode"], "name": source.name, "programmingLanguage": lang,
        "isPartOf": workflow, "description": f"The CWL workflow ({CWL_KEY}) cwltool ran, each tool in its step's image"})
    if cwlprov is None or not (cwlprov / "bag-info.txt").is_file():
        return
    props = {"name": "cwltool's provenance of this run (CWLProv research object)",
             "conformsTo": {"@id": CWLPROV}, "about": run}
    ro = (crate.add_dataset(cwlprov, dest_path="cwlprov/", properties=props) if include_data
          else crate.add_dataset(cwlprov.as_uri() + "/", properties=props))
    run["subjectOf"] = ro


def _iso(stamp: float | None) -> str | None:
    from datetime import datetime

    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds") if stamp else None


def _action(crate, manifest, step, info, attempt, tool, datasets, suffix: str) -> Any:
    """One container run of a step: its image, times, status, params, datasets, usage and MLflow run."""
    from runner.engines import engine

    name = step.name
    image = info.get("image", "")
    try:
        kind = engine(manifest["engine"]).image_kind
    except UserError:  # an engine not installed here: its images are OCI ones unless it said otherwise
        kind = "DockerImage"
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    container = _entity(crate, f"#image-{image}", {
        "@type": "ContainerImage", "additionalType": {"@id": WFRUN + kind},
        "name": repo or image, "tag": tag or "latest",
        **({"sha256": info["image_id"].removeprefix("sha256:")} if info.get("image_id") else {})})
    values = []
    for key, value in {**step.params}.items():
        values.append(_entity(crate, f"#{name}{suffix}-value-{key}", {
            "@type": "PropertyValue", "name": key, "value": str(value),
            "exampleOfWork": {"@id": f"#{step.parent or name}-param-{key}"}}))
    usage = [_entity(crate, f"#{name}{suffix}-usage-{k}", {"@type": "PropertyValue", "propertyID": k, "name": k,
                                                           "value": str(v)})
             for k, v in (attempt.get("usage") or {}).items() if isinstance(v, (int, float))]
    props: dict[str, Any] = {
        "name": f"{manifest['engine']} container of {name}{suffix}", "startTime": _iso(attempt.get("start")),
        "endTime": _iso(attempt.get("end")),
        "actionStatus": STATUS.get(attempt.get("status"), "FailedActionStatus"),
        "containerImage": container, "exitCode": attempt.get("exit_code"), "resourceUsage": usage,
        "description": " ".join(info.get("argv", []))}
    log = Path(attempt.get("log") or info.get("log") or "")
    run_id = mlflow_run(log) if log.is_file() else ""
    if run_id:
        props["identifier"] = f"mlflow:runs/{run_id}"
        found = MODEL.findall(log.read_text(errors="replace"))
        if found:
            props["about"] = f"models:/{found[-1][0]}/{found[-1][1]}"
    result = [datasets[step.output]] if step.output else []
    return crate.add_action(tool, identifier=f"#action-{name}{suffix}",
                            object=[*(datasets[d] for d in step.inputs), *values], result=result,
                            properties={"@type": "CreateAction", **{k: v for k, v in props.items() if v is not None}})


def _dataset(crate, name: str, path: Path, include_data: bool) -> Any:
    """A dataset: copied into the crate (`data/NAME/`) or referenced by its file: URI; its files (up to FILE_LIMIT)
    with size and, up to HASH_LIMIT, sha256."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())[:FILE_LIMIT] if path.is_dir() else []
    if include_data:
        ds = crate.add_dataset(dest_path=f"data/{name}/", properties={"name": name})
        parts = [crate.add_file(f, dest_path=f"data/{name}/{f.relative_to(path)}", properties=_facts(f)) for f in files]
    else:
        ds = crate.add_dataset(path.as_uri() + "/", properties={"name": name})
        parts = [crate.add_file(f.as_uri(), properties=_facts(f)) for f in files]
    if parts:
        ds["hasPart"] = parts
    return ds


def _facts(f: Path) -> dict[str, Any]:
    size = f.stat().st_size
    facts: dict[str, Any] = {"contentSize": str(size), "name": f.name}
    if size <= HASH_LIMIT:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        facts["sha256"] = h.hexdigest()
    return facts

