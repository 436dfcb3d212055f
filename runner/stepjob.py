"""Run one step inside a batch job: `python -m runner.stepjob JOB.json` (written by the SLURM executor).

The step runs through the chosen engine with the same argv, binds and env as a local run; on success task 0 marks
the step complete. SIGTERM (scancel) stops the step's container or apptainer process before the job ends."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from runner.engines import get_engine
from runner.engines.base import Job, Mount
from runner.executor import step_fingerprint
from runner.state import State


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    job_fields = spec["job"]
    job = Job(**{**job_fields, "workdir": Path(job_fields["workdir"]),
                 "mounts": [Mount(Path(m["source"]), Path(m["target"]), m["read_only"]) for m in job_fields["mounts"]]})
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # several tasks (srun): what Lightning's SLURM environment reads to set up DDP goes into the container
        job.env.update({k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
    job.labels = {**job.labels, "org.itwin-run.task": os.environ.get("SLURM_PROCID", "0"),
                  "org.itwin-run.slurm-job": os.environ.get("SLURM_JOB_ID", "")}
    engine = get_engine(spec["engine"])
    engine.begin({"org.itwin-run.run": spec["run_id"], "org.itwin-run.slurm-job": os.environ.get("SLURM_JOB_ID", ""),
                  "org.itwin-run.task": os.environ.get("SLURM_PROCID", "0")})

    def on_term(signum, frame):
        engine.interrupt(force=False)

    signal.signal(signal.SIGTERM, on_term)
    try:
        code = engine.run(job, lambda line: print(line, flush=True))
    finally:
        engine.end()
    if code == 0 and os.environ.get("SLURM_PROCID", "0") == "0":
        output = Path(spec["output"]) if spec.get("output") else None
        fp = step_fingerprint(spec["fingerprint_parts"], {d: Path(p) for d, p in spec["inputs"].items()})
        State(Path(spec["root"])).complete(job.step, fp, output, spec["run_id"])
    return code


if __name__ == "__main__":
    sys.exit(main())
