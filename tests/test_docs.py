"""The documentation site: `make docs`'s strict build (a broken link fails it), its generated reference pages, and
the built pages rendered by headless Chromium from a local web server (no network)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO

MKDOCS = str(Path(sys.executable).parent / "mkdocs")
ENV = {"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    subprocess.run([sys.executable, "docs/gen.py"], cwd=REPO, check=True)
    dest = tmp_path_factory.mktemp("site")
    res = subprocess.run([MKDOCS, "build", "--strict", "-d", str(dest)], cwd=REPO, capture_output=True,
                         text=True, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return dest


def test_a_broken_link_fails_the_strict_build(tmp_path):
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path)
    page = tmp_path / "docs" / "guide" / "sweeps.md"
    page.write_text(page.read_text() + "\nSee [the old page](gone.md).\n")
    res = subprocess.run([MKDOCS, "build", "--strict", "-d", str(tmp_path / "site")], cwd=tmp_path,
                         capture_output=True, text=True, env=ENV)
    assert res.returncode != 0 and "gone.md" in res.stderr


@pytest.mark.xdist_group("site")  # one built site (tests/test_suite_rules.py)
def test_reference_pages_come_from_the_schema_the_cli_and_the_exit_codes(site):
    from runner.errors import EXIT_CODES
    from runner.workflow import Step

    ref = (REPO / "docs" / "reference" / "workflow.md").read_text()
    for field in Step.model_fields:
        assert f"| `{field}` |" in ref, field
    assert "`parallel: 2` (use-cases/surrogate/sweep-workflow.yml)" in ref
    cli = (REPO / "docs" / "reference" / "cli.md").read_text()
    assert "## `itwin-run crate`" in cli and "--include-data" in cli
    codes = (REPO / "docs" / "reference" / "exit-codes.md").read_text()
    assert all(f"| {code} |" in codes for code, _ in EXIT_CODES)
    readme = (REPO / "README.md").read_text()  # the same table, word for word
    assert all(f"| {code} | {when} |" in readme for code, when in EXIT_CODES)
    index = json.loads((site / "search" / "search_index.json").read_text())["docs"]
    assert any(d["location"].startswith("guide/sweeps/") and "sweep" in d["text"].lower() for d in index)


@contextlib.contextmanager
def served(site: Path):
    """The site from a local web server (the search needs http:, not file:): its address."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def render(site: Path, page: str) -> str:
    with served(site) as url:
        res = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", f"{url}/{page}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.browser
@pytest.mark.xdist_group("site")
def test_chromium_renders_the_start_page_and_a_reference_page(site):
    start = render(site, "")
    assert '<h1 id="itwin-run">itwin-run</h1>' in start and 'id="your-first-workflow"' in start
    assert 'href="guide/sweeps/"' in start  # the nav
    ref = render(site, "reference/workflow/")
    assert '<h2 id="sweepbest"><code>sweep.best</code>' in ref and ref.count("<table>") >= 8


@pytest.mark.browser
@pytest.mark.xdist_group("site")
def test_the_search_box_finds_sweep_in_chromium(site, tmp_path):
    """Material's own search (its web worker and index), asked through the page as a reader would: ?q=sweep."""
    from tests.services import Browser, wait_for

    with served(site) as url:
        browser = Browser(tmp_path / "profile")
        try:
            browser.open(f"{url}/?q=sweep")
            links = wait_for(lambda: browser.value("[...document.querySelectorAll('.md-search-result__item a')]"
                                                   ".map(a => a.getAttribute('href'))"), tries=150, every=0.2)
        finally:
            browser.close()
    assert links and links[0].startswith(f"{url}/guide/sweeps/"), links
