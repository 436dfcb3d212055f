"""The Docker step runner's own threads against a stand-in for Docker's API (fast tier: the moment one thread is
inside a daemon call cannot be chosen against a real daemon). The real daemon's side of the same paths is in
test_schedule.py (the next step's container made while its upstream runs) and test_crash.py (interrupts)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

from runner.engines.base import Job
from runner.engines.docker import run as docker_run

RUN = {"org.itwin-run.run": "20261129-000000-abcdef"}


class Api:
    """Docker's low-level API as the runner calls it; a step container's create waits until `release` is set."""

    base_url = "http://stand-in:2375"  # not this machine's daemon: no cgroup measuring

    def __init__(self) -> None:
        self.made: list[str] = []
        self.removed: list[str] = []
        self.inside, self.release = threading.Event(), threading.Event()

    def create_host_config(self, **options):
        return options

    def create_container(self, image, command, labels, **_):
        if labels.get("org.itwin-run.role") != "network":  # the run's network holder is made at once
            self.inside.set()
            self.release.wait(30)
        self.made.append(f"c{len(self.made)}-{labels.get('org.itwin-run.role', 'step')}")
        return {"Id": self.made[-1]}

    def start(self, cid):
        pass

    def kill(self, cid, signal=None):
        pass

    def wait(self, cid, condition="not-running"):
        return {"StatusCode": 0}

    def remove_container(self, cid, force=False):
        self.removed.append(cid)

    def containers(self, **_):
        return []


def test_an_interrupt_while_the_next_steps_container_is_made_is_not_held_up_and_leaves_nothing(monkeypatch,
                                                                                           tmp_path: Path):
    """prepare() made the next step's container holding the runner's lock, so whatever else needed the lock waited
    for that create call: the start of the step that was to run then (about 9 ms a step in a chain of trivial
    steps), and interrupt(). Made outside the lock, a container that interrupt() missed is removed by its maker."""
    api = Api()
    runner = docker_run.DockerRunner()
    monkeypatch.setattr(docker_run, "client", lambda host=None: SimpleNamespace(api=api))
    monkeypatch.setattr(docker_run, "image_id", lambda ref, host=None: "sha256:base")
    runner.begin(RUN)
    job = Job(step="next", image="img", argv=["true"], workdir=tmp_path, mounts=[], env={}, user="1:1")
    maker = threading.Thread(target=runner.prepare, args=(job,), daemon=True)
    maker.start()
    try:
        assert api.inside.wait(30), "prepare() never made the container"
        stopper = threading.Thread(target=runner.interrupt, args=(False,), daemon=True)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "interrupt() waited for another step's create call"
    finally:
        api.release.set()
    maker.join(30)
    runner.end()
    step = [cid for cid in api.made if cid.endswith("-step")]
    assert len(step) == 1 and step[0] in api.removed, (api.made, api.removed)
