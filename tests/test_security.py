"""Least privilege against the real daemon: no engine socket, no capabilities, no root by default, a pids limit."""

from __future__ import annotations

import os

import pytest

from tests.conftest import itwin

pytestmark = pytest.mark.docker

PROBE = r'''
import os, socket, sys
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
reach = []
for p in ("/var/run/docker.sock", "/run/docker.sock", "/proc/1/root/var/run/docker.sock", "/proc/1/root/run/docker.sock"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p); reach.append(p)
    except OSError:
        pass
open(os.path.join(sys.argv[sys.argv.index("--output") + 1], "probe.txt"), "w").write("x")
print("caps", caps, "reach", reach, "uid", os.getuid())
'''


def test_step_has_no_socket_no_capabilities_and_no_root(toy, docker_client, no_leftovers):
    (toy / "probe.py").write_text(PROBE)
    (toy / "probe.yml").write_text("datasets: {o: {location: ./data/o}}\nsteps:\n"
                                   "  - probe: {output: o, command: python probe.py, env: {file: ./envs/requirements.txt}}\n")
    res = itwin("probe.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    # yourself; as root, the project's owner, or nobody where root owns it (never root itself)
    owner = toy.stat().st_uid
    uid = os.getuid() if os.getuid() != 0 else owner if owner != 0 else 65534
    assert f"probe | caps 0000000000000000 reach [] uid {uid}\n" in res.stdout, res.stdout
    assert (toy / "data/o/probe.txt").stat().st_uid == uid
    back = itwin("--force", "--user", "0:0", "probe.yml", cwd=toy)  # the explicit way back to root
    assert back.returncode == 0 and "uid 0" in back.stdout and "caps 0000000000000000" in back.stdout


def test_fork_bomb_hits_the_pids_limit(toy, docker_client, no_leftovers):
    bomb = ("import os, sys, time\nn = 0\ntry:\n    for _ in range(2000):\n        if os.fork() == 0:\n"
            "            time.sleep(20); os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    print('stopped after', n, 'forks:', e.strerror); sys.exit(3)\nprint('forked', n)\n")
    (toy / "bomb.py").write_text(bomb)
    (toy / "bomb.yml").write_text("datasets: {o: {location: ./data/o}}\nsteps:\n"
                                  "  - bomb: {output: o, command: python bomb.py, env: {file: ./envs/requirements.txt}}\n")
    res = itwin("bomb.yml", cwd=toy, timeout=120)
    assert res.returncode == 1 and "failed with exit code 3" in res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    assert "bomb | stopped after" in res.stdout and "Resource temporarily unavailable" in res.stdout
    assert itwin("history", cwd=toy).returncode == 0  # the host answers


@pytest.mark.skipif(os.getuid() != 0, reason="steps run as another uid only when itwin-run runs as root")
def test_private_project_under_root_is_one_clear_line(toy, docker_client, no_leftovers):
    toy.chmod(0o700)
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {toy} is not readable by uid 65534, which steps run as when itwin-run runs as root: make it readable "
        f"(chmod o+rx {toy}) or run the steps as root (--user 0:0)")
    assert itwin("--user", "0:0", "workflow.yml", cwd=toy).returncode == 0
