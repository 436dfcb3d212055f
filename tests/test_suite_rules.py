"""Rules the suite keeps (fast tier): no assertion on how long something took. Machines are noisy; timings live
in bench/, and tests check order, records and outcomes instead."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
CLOCKS = {"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns"}
DURATIONS = {"wall_s", "elapsed", "duration"}


def _is_clock(node: ast.AST) -> bool:
    """A call such as time.monotonic() or perf_counter()."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr in CLOCKS and isinstance(f.value, ast.Name)
            and f.value.id == "time") or (isinstance(f, ast.Name) and f.id in CLOCKS - {"time"})


def _is_duration(node: ast.AST) -> bool:
    """A recorded duration compared as it is: x["wall_s"], x.elapsed (a ratio of two durations is fine)."""
    key = node.slice if isinstance(node, ast.Subscript) else None
    return (isinstance(key, ast.Constant) and key.value in DURATIONS) or (
        isinstance(node, ast.Attribute) and node.attr in DURATIONS)


def timing_asserts(source: str, name: str = "<test>") -> list[str]:
    """`file:line` of each assert that compares a clock reading, a value taken from a clock, or a duration."""
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        timed = {t.id for node in ast.walk(func) if isinstance(node, ast.Assign) and any(
            _is_clock(n) for n in ast.walk(node.value)) for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(func):
            if not isinstance(node, ast.Assert):
                continue
            for part in ast.walk(node.test):
                direct = [part.left, *part.comparators] if isinstance(part, ast.Compare) else []
                if _is_clock(part) or (isinstance(part, ast.Name) and part.id in timed) or any(
                        _is_duration(side) for side in direct):
                    found.append(f"{name}:{node.lineno}")
                    break
    return sorted(set(found), key=lambda s: int(s.rsplit(":", 1)[1]))


def test_no_assertion_on_time_in_the_suite():
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in timing_asserts(path.read_text(), path.name)]
    assert found == []


def test_the_rule_sees_each_way_of_timing():
    source = '''
import time
from time import perf_counter
def test_x(m):
    t0 = time.monotonic()
    run()
    assert time.monotonic() - t0 < 5
    start = perf_counter()
    assert ok and perf_counter() - start < 1
    took = time.time() - t0
    assert took < 2
    assert m["usage"]["wall_s"] <= 5
    assert m.elapsed > 1
    assert m["cpu_s"] / m["wall_s"] <= 1.15
    assert m["killed"] == "time limit (2s)"
'''
    assert timing_asserts(source) == ["<test>:7", "<test>:9", "<test>:11", "<test>:12", "<test>:13"]
