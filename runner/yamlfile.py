"""The workflow file as YAML with positions: every key's and item's line and column, and problems worded
`file:line:column: field: message`."""

from __future__ import annotations

from typing import Any

import yaml

from runner.errors import ValidationError

Lines = dict[tuple, tuple[int, int]]  # a key's or item's path -> its line and column (from 1)


def compose(text: str, fname: str) -> tuple[Any, Lines]:
    """Load YAML into plain objects and remember the line and column of every key/item path."""
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml where there is one
    except yaml.YAMLError as exc:
        at = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)  # not `mark`: build() calls it
        line = at.line + 1 if at else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        row = text.splitlines()[at.line] if at and at.line < len(text.splitlines()) else ""
        if at and "\t" in row[:at.column + 1]:  # YAML indents with spaces only
            col = row.index("\t") + 1
            raise ValidationError([f"{fname}:{line}:{col}: yaml: a tab at column {col}: indent with spaces"]) from None
        raise ValidationError([f"{fname}:{line}:{at.column + 1 if at else 1}: yaml: {problem}"]) from None
    lines: Lines = {}
    constructor = yaml.SafeLoader("")

    def build(n: yaml.Node, path: tuple) -> Any:
        lines.setdefault(path, (n.start_mark.line + 1, n.start_mark.column + 1))
        if isinstance(n, yaml.MappingNode):
            constructor.flatten_mapping(n)
            out: dict[Any, Any] = {}
            for k, v in n.value:
                # keys are names as written: YAML 1.1 would turn `on:`/`off:`/`1:` into bools and ints
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if not isinstance(key, str) or not key:
                    raise ValidationError([f"{fname}:{mark(k)}: {dotted(path) or 'top'}: keys must be plain names"])
                if key in out:
                    raise ValidationError([f"{fname}:{mark(k)}: {dotted(path + (key,))}: duplicate key"])
                lines[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
                out[key] = build(v, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, path + (i,)) for i, v in enumerate(n.value)]
        try:
            return constructor.construct_object(n, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:  # `!!int abc` is a ValueError of the constructor's
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValidationError([f"{fname}:{mark(n)}: {dotted(path)}: {n.tag} {n.value!r}: {problem}"]) from None

    if node is None:
        return None, lines
    return build(node, ()), lines


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        if p == "[key]":  # pydantic's marker for a problem with a mapping's key: the key is already named
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def mark(node: yaml.Node) -> str:
    return f"{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def line_of(lines: Lines, path: tuple) -> int:
    return at(lines, path)[0]


def at(lines: Lines, path: tuple) -> tuple[int, int]:
    """The line and column of a path, or of the nearest enclosing one that has them."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, (1, 1))


def where(lines: Lines, path: tuple) -> str:
    return "{}:{}".format(*at(lines, path))


def control_characters(data: Any, lines: Lines, fname: str) -> list[str]:
    """No NUL anywhere, and no line break but in a command (where it is a space between words): workflow strings
    end up in argv, bind options and batch scripts."""
    problems = []

    def visit(v: Any, path: tuple) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                visit(x, path + (k,))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                visit(x, path + (i,))
        elif isinstance(v, str):
            in_command = len(path) >= 4 and path[0] == "steps" and path[3] == "command"
            if "\0" in v or (not in_command and ("\n" in v or "\r" in v)):
                problems.append(f"{fname}:{where(lines, path)}: {dotted(path)}: "
                                f"{'NUL' if chr(0) in v else 'a line break'} is not allowed here")
    visit(data, ())
    return problems


def closest(name: str, known: Any) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def by_line(problem: str) -> tuple[int, str]:
    parts = problem.split(":")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, problem)


def union_tag(p: Any) -> bool:
    """A part of a pydantic error location that names a union member, not a field of the file."""
    return isinstance(p, str) and (p in {"str", "int", "float", "bool", "list[...]", "literal['all']"} or
                                   p.startswith(("constrained-", "list[", "dict[", "function-", "literal[")))


def short(err: dict) -> str:
    """A pydantic error in a few words (a pattern by what it stands for)."""
    from runner.limits import PATTERN_WORDS

    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] in PATTERN_WORDS:
        return f"{err['input']!r} is not {PATTERN_WORDS[err['ctx']['pattern']]}"
    return msg
