"""The Podman engine's own service (`podman system service` on a private socket), against a stand-in `podman` on PATH
that fails the way a loaded machine's did: its socket is there, and no one answers on it. The real service is
tests/test_podman.py's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runner.engines import podman
from runner.engines.docker.client import client
from runner.errors import UserError

FAKE = '''#!{python}
"""`podman system service --time=N unix://PATH`: the first FAILS starts bind the socket and exit as Podman does
when it gives up; later ones answer every GET as Podman's Docker-compatible API does, and log the paths asked."""
import http.server, os, socketserver, sys, time
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
server = socketserver.UnixStreamServer(path, Answer, bind_and_activate=False)
server.server_bind()  # the socket is there; no one listens on it yet
if starts < int(os.environ["FAKE_PODMAN_FAILS"]):
    time.sleep(0.3)  # as a loaded machine's Podman, slow to give up and say so
    sys.exit("Error: the stand-in gave up")
server.server_activate()
server.timeout = int(sys.argv[-2].removeprefix("--time="))  # and, as Podman, it stops that long after its last
server.handle_timeout = lambda: sys.exit(0)  # request
while True:
    server.handle_request()
'''


@pytest.fixture
def fake_podman(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "podman"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    run_dir = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # a socket's path has at most 107 bytes
    state = run_dir / "state"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_PODMAN_STATE", str(state))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run_dir))
    podman.stop()  # this process's real service, where a test before this one started it
    yield state
    podman.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


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


def test_the_folder_a_killed_runners_service_left_goes_when_the_next_starts(fake_podman, monkeypatch):
    monkeypatch.setenv("FAKE_PODMAN_FAILS", "0")
    runner = subprocess.Popen([sys.executable, "-c", "from runner.engines import podman; podman.service(); "
                               "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])  # no atexit: killed
    runner.wait()
    (left,) = fake_podman.parent.glob("itwin-podman-*")
    podman.service()
    assert left not in fake_podman.parent.glob("itwin-podman-*")
    assert len(list(fake_podman.parent.glob("itwin-podman-*"))) == 1  # the new service's own
