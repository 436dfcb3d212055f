"""Apptainer (or SingularityCE) engine for HPC nodes: ApptainerBuilder makes SIFs, ApptainerRunner runs steps as
`apptainer exec` of them, through spython.

Images come, in this order, from the local SIF cache, from converting the step's Docker image (built by the Docker
engine where a daemon answers), or from a registry (`docker://`, `oras://`) for prebuilt images.

A step image with `env.source` packages comes in two parts, as its Docker image has two layers: a SIF of the
dependencies (converted once, cached by its own hash) and a small squashfs of the sources installed on top, run as
`apptainer exec --overlay SOURCES.sqfs:ro DEPS.sif`. A source edit makes a new overlay in seconds and leaves the
dependency SIF as it is. The step's image is then written `DEPS.sif::SOURCES.sqfs` (records, save, SLURM jobs)."""

from __future__ import annotations

from runner.engines.apptainer.build import ApptainerBuilder
from runner.engines.apptainer.inventory import credentials, doctor, guarded, made, remove
from runner.engines.apptainer.run import ApptainerRunner
from runner.engines.apptainer.tool import one_maker, unwritable
from runner.engines.base import Engine
from runner.places import sif_cache

ENGINE = Engine(name="apptainer", builder=ApptainerBuilder, runner=ApptainerRunner, made=made, remove=remove,
                doctor=doctor, aliases=("singularity",), image_kind="SIFImage", guarded=guarded, store=sif_cache,
                login="apptainer registry login --username USER docker://{host}", credentials=credentials)

__all__ = ["ENGINE", "ApptainerBuilder", "ApptainerRunner", "one_maker", "unwritable"]
