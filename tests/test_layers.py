"""Imports run one way (fast tier): workflow → images → engines / executors → session → CLI, with no circle
anywhere in runner/ (imports inside functions and for type checking count too), and no private name taken from
another module."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"
LAYERS = {"runner.workflow": 1, "runner.images": 2, "runner.engines": 3, "runner.executors": 3, "runner.session": 4,
          "runner.cli": 5}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the runner modules it imports; and `module: from X import _name` for each private name taken."""
    known = {module_name(p, root) for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    private = []
    for path in root.rglob("*.py"):
        me = module_name(path, root)
        deps = graph.setdefault(me, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root.name:
                deps.add(node.module)
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        deps.add(f"{node.module}.{alias.name}")
                    elif alias.name.startswith("_") and node.module != me:
                        private.append(f"{me}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == root.name)
        deps.discard(me)
    return graph, private


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int | None:
    return next((n for prefix, n in LAYERS.items() if module == prefix or module.startswith(prefix + ".")), None)


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if layer(m) is not None and layer(d) is not None and layer(d) > layer(m))


def test_imports_run_one_way_with_no_circle_and_no_private_names():
    graph, private = imports(RUNNER)
    assert circles(graph) == []
    assert wrong_way(graph) == []
    assert private == []


def test_the_check_sees_a_circle_a_wrong_way_and_a_private_name(tmp_path):
    pkg = tmp_path / "runner"
    (pkg / "engines").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "workflow.py").write_text("def load():\n    from runner.engines.docker import run\n")
    (pkg / "engines" / "__init__.py").write_text("")
    (pkg / "engines" / "docker.py").write_text("from runner.workflow import _line\nfrom runner.session import x\n")
    (pkg / "session.py").write_text("import runner.engines.docker\n")
    graph, private = imports(pkg)
    assert circles(graph) == [["runner.engines.docker", "runner.session", "runner.workflow"]]
    assert wrong_way(graph) == ["runner.engines.docker -> runner.session", "runner.workflow -> runner.engines.docker"]
    assert private == ["runner.engines.docker: from runner.workflow import _line"]


def test_no_module_over_400_lines():
    """Files doing several jobs are split (the Docker and Apptainer engines are packages; the session's plan,
    freshness, history and scaffold are modules of their own)."""
    long = {str(p.relative_to(RUNNER.parent)): n for p in RUNNER.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def long_functions(root: Path, limit: int = 60) -> dict[str, int]:
    """`module.function` -> its body's lines (from its first statement: a CLI command's parameter list aside)."""
    out = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.body[0].lineno + 1
                if lines > limit:
                    out[f"{module_name(path, root)}.{node.name}"] = lines
    return out


def test_no_function_body_over_60_lines(tmp_path):
    """A function that does several things is split (the session's scheduling loop, Docker's run, the workflow's
    checks); the check itself sees a long one."""
    assert long_functions(RUNNER) == {}
    pkg = tmp_path / "runner"
    pkg.mkdir()
    (pkg / "long.py").write_text("def f(\n    a: int = 1,\n    b: int = 2,\n):\n" + "    a += 1\n" * 61)
    assert long_functions(pkg) == {"runner.long.f": 61}


# What asks the engines and executors instead of knowing them: the mount policy (what they guard), the inventory
# (where their images are), doctor (their checks, their registry login) and the command line (their flags).
NEUTRAL = ["policy", "inventory", "doctor", "cli"]
SHORTCUTS = {"cli": {"cwl"}}  # `--cwl`, the brief's name for `--executor cwl`


def named(path: Path, words: set[str]) -> set[str]:
    """Which of `words` the module's code names (identifiers and strings; docstrings and comments aside)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.alias)):
            texts.append(node.name)
    return {w for w in words if any(w in t.lower() for t in texts)}


def test_the_policy_inventory_doctor_and_cli_name_no_engine_or_executor():
    from runner.engines import available as engines
    from runner.engines import engines as loaded
    from runner.executors import available as executors

    words = {*engines(), *(a for e in loaded() for a in e.aliases), *executors()} - {"local"}
    assert words >= {"docker", "apptainer", "singularity", "podman", "slurm", "cwl"}
    found = {m: sorted(named(RUNNER / f"{m}.py", words) - SHORTCUTS.get(m, set())) for m in NEUTRAL}
    assert found == {m: [] for m in NEUTRAL}
    probe = RUNNER.parent / "tests" / "fakes.py"  # the check sees a name: the fake engine says docker's words
    assert named(probe, words)
