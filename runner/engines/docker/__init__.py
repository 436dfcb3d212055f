"""Docker engine through docker-py (no docker CLI): DockerBuilder makes step images, DockerRunner runs steps."""

from __future__ import annotations

from runner.engines.base import Engine
from runner.engines.docker.build import DockerBuilder
from runner.engines.docker.buildlog import BuildPhase
from runner.engines.docker.client import client, gpu_requests, image_id
from runner.engines.docker.inventory import credentials, doctor, guarded, made, remove
from runner.engines.docker.run import DockerRunner

ENGINE = Engine(name="docker", builder=DockerBuilder, runner=DockerRunner, made=made, remove=remove, doctor=doctor,
                guarded=guarded, credentials=credentials)

__all__ = ["ENGINE", "BuildPhase", "DockerBuilder", "DockerRunner", "client", "gpu_requests", "image_id"]
