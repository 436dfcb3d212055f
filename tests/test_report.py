"""The run report and `itwin-run dag` (no daemon: a run of the fake engine gives the manifest)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from runner import workflow
from tests.conftest import itwin
from tests.fakes import FakeRunner, fails
from tests.test_session import CHAIN, FORK, last_manifest, project, run  # noqa: F401  (project is a fixture)

SVG = "{http://www.w3.org/2000/svg}"


def test_dag_in_dot_mermaid_and_svg(tmp_path):
    (tmp_path / "env.txt").write_text("")
    (tmp_path / "fork.yml").write_text(FORK)
    wf = workflow.load(tmp_path / "fork.yml", root=tmp_path)
    assert sorted(wf.edges()) == [("a", "c", "a"), ("b", "c", "b")]
    dot = itwin("dag", "fork.yml", cwd=tmp_path).stdout
    assert dot.startswith("digraph workflow {") and '"a" -> "c" [label="a"];' in dot and '"b" -> "c"' in dot
    mermaid = itwin("dag", "--format", "mermaid", "fork.yml", cwd=tmp_path).stdout
    assert mermaid.splitlines()[0] == "flowchart LR" and 's0 -->|"a"| s2' in mermaid
    svg = ET.fromstring(itwin("dag", "--format", "svg", "fork.yml", cwd=tmp_path).stdout)
    assert [t.text for t in svg.iter(f"{SVG}text")] == ["a", "b", "c"]
    boxes = {t.text: float(r.get("x")) for g in svg.iter(f"{SVG}g") for r, t in [(g.find(f"{SVG}rect"),
                                                                                    g.find(f"{SVG}text"))]}
    assert boxes["a"] == boxes["b"] < boxes["c"]  # c comes after both
    assert len(list(svg.iter(f"{SVG}path"))) == 3  # two edges (and the arrow head)
    bad = itwin("dag", "--format", "png", "fork.yml", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --format png: one of dot, mermaid, svg"


def test_report_is_one_self_contained_page(project):  # noqa: F811
    import pytest

    from runner.errors import StepFailed

    with pytest.raises(StepFailed):
        run(project, FakeRunner({"two": fails(3)}))
    m = last_manifest(project)
    res = itwin("report", cwd=project)
    assert res.returncode == 0, res.stderr
    page = Path(res.stdout.strip())
    assert page == project / ".itwin-run/runs" / m["run_id"] / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "<script" not in text and "<link" not in text
    body = text.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == 3 and "skipped: upstream failed" in body
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="timeline"' in text
    assert 'href="two.log"' in text  # logs beside the report
    assert m["dag"] == [["one", "two", "a"], ["two", "three", "b"]]
    other = project / "elsewhere.html"
    assert itwin("report", m["run_id"], "-o", str(other), cwd=project).returncode == 0
    assert f'href=".itwin-run/runs/{m["run_id"]}/two.log"' in other.read_text()


def test_the_page_says_why_a_step_failed_which_run_made_what_is_up_to_date_and_labels_each_tick_once(project):  # noqa: F811
    """#32: after a no-op rerun the page was a table of `-`; a failed step's error was not on it; a short run's
    timeline labelled every tick 0.0s."""
    import pytest

    from runner.errors import StepFailed
    from runner.report import ticks

    run(project, FakeRunner())
    first = last_manifest(project)["run_id"]
    run(project, FakeRunner())  # nothing to do
    page = Path(itwin("report", cwd=project).stdout.strip()).read_text()
    for step in ("one", "two", "three"):
        assert f'made by run <a href="../{first}/{step}.log">{first}</a>' in page, page
    (project / "two.py").write_text("print('edited')\n")
    with pytest.raises(StepFailed):
        run(project, FakeRunner({"two": fails(3)}))
    page = Path(itwin("report", cwd=project).stdout.strip()).read_text()
    assert '<div class="why">exit code 3</div><pre class="tail">running two</pre>' in page, page
    for span in (0.004, 0.013, 0.1, 0.7, 2.7, 9.9, 61.0, 333.0, 7200.0):
        labels = [label for _, label in ticks(span)]
        assert 2 <= len(labels) <= 6 and len(set(labels)) == len(labels), (span, labels)
        assert all(0 <= t <= span for t, _ in ticks(span))
