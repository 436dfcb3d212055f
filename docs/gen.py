"""Write the pages `make docs` generates, never by hand: the start page (the README's first part), the
workflow-file reference (from the pydantic schema, with examples from the shipped workflows), the CLI reference
(from typer) and the exit codes (runner/errors.py). Run from the repository root: python docs/gen.py"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "docs" / "reference"

from pydantic import BaseModel  # noqa: E402

from runner import workflow  # noqa: E402
from runner.errors import EXIT_CODES  # noqa: E402
from runner.sweep import Best, Sweep  # noqa: E402

# Where each model sits in a workflow file (the path an example is looked up by).
MODELS: list[tuple[str, type[BaseModel], str]] = [
    ("Top level", workflow.WorkflowFile, ""),
    ("A dataset: `datasets.NAME`", workflow.Dataset, "datasets.*"),
    ("A step: `steps[i].NAME`", workflow.Step, "steps.*"),
    ("`env`", workflow.Env, "steps.*.env"),
    ("`resources` (a step's, or the top level's default)", workflow.Resources, "steps.*.resources"),
    ("`slurm`", workflow.Slurm, "steps.*.slurm"),
    ("`sweep`", Sweep, "steps.*.sweep"),
    ("`sweep.best`", Best, "steps.*.sweep.best"),
]
SHIPPED = [*sorted((REPO / "use-cases").glob("*/*workflow*.yml")), REPO / "tests" / "toy" / "workflow.yml"]


def type_words(prop: dict[str, Any]) -> str:
    """A field's JSON schema in words: text, integer >= 0, list of text, map of name to ..., a | b."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " | ".join(type_words(p) for p in prop["anyOf"])
    if "const" in prop:
        return repr(prop["const"])
    if "enum" in prop:
        return " | ".join(repr(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        return f"list of {type_words(prop.get('items', {}))}"
    if kind == "object":
        return f"map of name to {type_words(prop.get('additionalProperties', {}))}"
    words = {"string": "text", "integer": "integer", "number": "number", "boolean": "true/false", "null": "null"}
    text = words.get(kind, "any")
    bounds = [f">= {prop['minimum']}" if "minimum" in prop else "", f"> {prop['exclusiveMinimum']}"
              if "exclusiveMinimum" in prop else "", f"<= {prop['maximum']}" if "maximum" in prop else ""]
    if prop.get("pattern"):
        bounds.append(f"matching {prop['pattern']}")
    return " ".join([text, *filter(None, bounds)])


def examples() -> dict[str, tuple[Any, str]]:
    """dotted path (steps.*.env.file) -> (the first value seen, the file it is from)."""
    seen: dict[str, tuple[Any, str]] = {}

    def walk(node: Any, path: str, where: str) -> None:
        if path:
            seen.setdefault(path, (node, where))
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}".lstrip("."), where)

    for f in SHIPPED:
        data = yaml.safe_load(f.read_text())
        where = str(f.relative_to(REPO))
        for key in ("datasets", "resources"):
            for name, value in (data.get(key) or {}).items():
                walk(value, f"{key}.*.{name}" if key == "datasets" else f"{key}.{name}", where)
        for item in data.get("steps") or []:
            for step in item.values():
                walk(step, "steps.*", where)
    return {k.replace("datasets.*.", "datasets.*.", 1): v for k, v in seen.items()}


def field_rows(model: type[BaseModel], prefix: str, found: dict[str, tuple[Any, str]]) -> list[str]:
    rows = ["| field | type | default | example (from the shipped workflows) |", "| --- | --- | --- | --- |"]
    props = model.model_json_schema()["properties"]
    for name, info in model.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        key = f"{prefix}.{name}".lstrip(".")
        if prefix == "datasets.*":
            key = next((k for k in found if k.startswith("datasets.*.") and k.endswith(f".{name}")), key)
        example, where = found.get(key, (None, ""))
        text = yaml.safe_dump({name: example}, default_flow_style=True, width=400).strip()[1:-1]
        shown = f"`{text}` ({where})" if where and len(text) < 100 else "-"
        cells = [f"`{name}`", type_words(props.get(name, {})), f"`{default}`", shown]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def workflow_reference() -> str:
    found = examples()
    parts = ["# Workflow file reference", "",
             "Generated from the workflow model (`runner/workflow.py`, `runner/sweep.py`) by `make docs`. Every "
             "problem in a file is reported as `file:line: field: message` with exit code 2.", ""]
    for title, model, prefix in MODELS:
        parts += [f"## {title}", "", " ".join((model.__doc__ or "").split()), ""]
        parts += [*field_rows(model, prefix, found), ""]
    return "\n".join(parts)


def exit_codes() -> str:
    rows = ["# Exit codes", "", "Generated from `runner/errors.py` by `make docs`.", "", "| code | when |",
            "| --- | --- |"]
    rows += [f"| {code} | {when} |" for code, when in EXIT_CODES]
    return "\n".join(rows) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    readme = (REPO / "README.md").read_text()
    (REPO / "docs" / "index.md").write_text(readme.replace("](docs/", "]("))
    (OUT / "workflow.md").write_text(workflow_reference())
    (OUT / "exit-codes.md").write_text(exit_codes())
    (OUT / "cli.md").write_text(cli_reference())


def cli_reference() -> str:
    """What `typer runner.cli utils docs` writes, with `run` given every installed executor's flags first (as
    `itwin-run run` does)."""
    import typer
    import typer.main
    from typer.cli import get_docs_for_click

    from runner import cli, flags

    flags.executor_flags(cli.run)
    command = typer.main.get_command(cli.app)
    return get_docs_for_click(obj=command, ctx=typer.Context(command), name="itwin-run",
                              title="CLI reference").strip() + "\n"


if __name__ == "__main__":
    main()
