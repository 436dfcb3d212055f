"""The Podman engine's own service (`podman system service` on a private socket), against a stand-in `podman` on PATH
that fails the way a loaded machine's did: its socket is there, and no one answers on it. The real service is
tests/test_podman.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.engines import podman
from runner.engines.docker.client import client
from runner.errors import UserError

FAKE = '''#!{python}
"""`podman system service --time=N unix://PATH`: the first FAILS starts bind the socket and exit as Podman does
when it gives up; later ones answer every GET as Podman's Docker-compatible API does, and log the paths asked."""
import http.server, os, socketserver, sys
from pathlib import Path
path = sys.argv[-1].removeprefix("unix://")
state = Path(os.environ["FAKE_PODMAN_STATE"])
starts = len(state.read_text().splitlines()) if state.exists() else 0
with state.open("a") as f:
    f.write("start\\n")
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with state.open("a") as f:
            f.write(f"GET {{self.path}}\\n")
        self.send_response(200)
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")
    def address_string(self):
        return "socket"
server = socketserver.UnixStreamServer(path, Answer)
if starts < int(os.environ["FAKE_PODMAN_FAILS"]):
    sys.exit("Error: the stand-in gave up")
server.serve_forever()
'''


@pytest.fixture
def fake_podman(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "podman"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    state = tmp_path / "state"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_PODMAN_STATE", str(state))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    podman.stop()  # this process's real service, where a test before this one started it
    yield state
    podman.stop()


def test_a_service_that_dies_before_it_answers_is_started_again(fake_podman, monkeypatch):
    monkeypatch.setenv("FAKE_PODMAN_FAILS", "1")
    address = podman.service()
    assert client(address).api.ping()
    said = fake_podman.read_text().splitlines()
    assert said.count("start") == 2, said
    assert not any(line.endswith("/version") for line in said), f"docker-py asked /version (0.4 s to Podman): {said}"
    assert len(list(Path(fake_podman.parent).glob("itwin-podman-*"))) == 1  # the dead one's folder is gone


def test_a_service_that_never_answers_says_what_podman_said_in_one_line(fake_podman, monkeypatch):
    monkeypatch.setenv("FAKE_PODMAN_FAILS", "2")
    with pytest.raises(UserError) as err:
        podman.service()
    assert str(err.value) == "podman system service did not start: Error: the stand-in gave up"
    assert not list(Path(fake_podman.parent).glob("itwin-podman-*"))
