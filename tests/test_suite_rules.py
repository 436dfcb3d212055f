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


def _fixture_scope(func: ast.FunctionDef) -> str | None:
    """The scope of a @pytest.fixture(...) function ("function" for a plain @pytest.fixture), None if not one."""
    for dec in func.decorator_list:
        call = dec if isinstance(dec, ast.Call) else None
        target = call.func if call else dec
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            scope = next((k.value for k in (call.keywords if call else []) if k.arg == "scope"), None)
            return scope.value if isinstance(scope, ast.Constant) else "function"
    return None


def _grouped(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "xdist_group" for n in ast.walk(node))


def ungrouped_module_fixture_users(source: str, grouping: set[str], name: str = "<test>") -> list[str]:
    """`file:test` of each test that uses a module-scoped fixture of its file (directly or through the file's other
    fixtures) and names no xdist group, nor does its module (pytestmark), nor does a fixture in `grouping` (those
    conftest groups). pytest-xdist sets a module fixture up once on each worker that runs one of its tests: a
    trained model three times over, where a group of its own makes it once."""
    tree = ast.parse(source)
    funcs = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    fixtures = {f.name: f for f in funcs if _fixture_scope(f)}
    module_wide = any(isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in
                                                         s.targets) and _grouped(s.value) for s in tree.body)

    def needs(func: ast.FunctionDef, seen: frozenset[str] = frozenset()) -> set[str]:
        """The fixtures func asks for, with those they ask for in turn."""
        names = {a.arg for a in func.args.args}
        for n in names & fixtures.keys() - seen:
            names |= needs(fixtures[n], seen | {n})
        return names

    shared = {n for n, f in fixtures.items() if _fixture_scope(f) in ("module", "package")}
    found = []
    for func in funcs:
        if func.name.startswith("test_") and not module_wide and not any(_grouped(d) for d in func.decorator_list):
            used = needs(func)
            if used & shared and not used & grouping:
                found.append(f"{name}:{func.name}")
    return found


def test_the_tests_of_a_module_fixture_share_one_worker():
    from tests.conftest import MACHINE

    found = [hit for path in sorted(TESTS.glob("test_*.py"))
             for hit in ungrouped_module_fixture_users(path.read_text(), MACHINE, path.name)]
    assert found == []


def test_the_grouping_rule_sees_a_fixture_through_another():
    source = '''
import pytest
@pytest.fixture(scope="module")
def model(tmp_path_factory): ...
@pytest.fixture
def store(model): ...
@pytest.fixture(scope="module")
def machine_only(user): ...
def test_direct(model): ...
def test_through(store): ...
@pytest.mark.xdist_group("model")
def test_grouped(model): ...
def test_grouped_by_conftest(machine_only): ...
def test_plain(tmp_path): ...
'''
    assert ungrouped_module_fixture_users(source, {"user"}) == ["<test>:test_direct", "<test>:test_through"]
    assert ungrouped_module_fixture_users("pytestmark = [pytest.mark.xdist_group('m')]\n" + source, {"user"}) == []
