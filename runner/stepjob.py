"""Run one step inside a batch job: `python -m runner.stepjob JOB.json` (written by the SLURM executor).

The step runs through the chosen engine with the same argv, binds and env as a local run; task 0 writes the step's
exit code beside its log and, on success with something in its output, the step record (runner.state.complete_step).
SIGTERM (scancel) stops the step's container or apptainer process before the job ends."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from runner.engines import Cancelled, get_runner
from runner.engines.base import Job, failure_reason
from runner.errors import UserError
from runner.policy import masker
from runner.state import complete_step
from runner.sweep import Best, Point, settle
from runner.tree import empty_output


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    if "pick" in spec:
        return pick(spec)
    job = Job.from_dict(spec["job"])
    task = os.environ.get("SLURM_PROCID", "0")
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # several tasks (srun): what Lightning's SLURM environment reads to set up DDP goes into the container
        job.env.update({k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
    slurm_job = os.environ.get("SLURM_JOB_ID", "")
    job.labels = {**job.labels, "org.itwin-run.task": task, "org.itwin-run.slurm-job": slurm_job}
    runner = get_runner(spec["engine"])
    runner.begin({"org.itwin-run.run": spec["run_id"], "org.itwin-run.slurm-job": slurm_job,
                  "org.itwin-run.task": task})
    signal.signal(signal.SIGTERM, lambda signum, frame: runner.interrupt(force=False))
    hide = masker(job.env)
    refused = ""
    try:
        code = runner.run(job, lambda line: print(hide(line), flush=True))
    except Cancelled:
        code = 143
    except UserError as exc:  # the engine could not start the step here (its image not on this node, say)
        refused, code = str(exc), exc.exit_code
        print(f"error: {refused}", flush=True)
    finally:
        runner.end()
    if task == "0":
        # what the step used and why the engine stopped it, for the session's record (written before the exit code)
        ended(spec, code, job.usage, refused or (failure_reason(runner, job, code, []) if code else ""))
        if code == 0 and not empty_output(spec["output"], spec.get("allow_empty_output", False)):
            complete_step(Path(spec["root"]), spec["key"], spec["parts"], spec["inputs"], spec["output"], spec["run_id"])
    return code


def ended(spec: dict, code: int, usage: dict, reason: str) -> None:
    exit_file = Path(spec["exit_file"])
    exit_file.with_suffix(".usage.json").write_text(json.dumps({**usage, "reason": reason}))
    exit_file.write_text(f"{code}\n")


def pick(spec: dict) -> int:
    """A sweep's own step as a job of its own (a detached run): once its points' jobs have ended, whatever their
    end, the best point that finished is linked as OUTPUT/best, as the session does. It fails when a point failed,
    as a session without --keep-going does, and when no point has the metric."""
    states: dict[str, str | None] = {}
    for slug, (_, exit_file) in spec["pick"]["points"].items():
        code = Path(exit_file).read_text().strip() if exit_file and Path(exit_file).is_file() else None
        states[slug] = "up to date" if exit_file is None else "done" if code == "0" else "failed"
    points = [Point(slug, values) for slug, (values, _) in spec["pick"]["points"].items()]
    status, info, lines = settle(Path(spec["output"]), points, Best(**spec["pick"]["best"]), states)
    print("\n".join(lines), flush=True)
    failed = [slug for slug, st in states.items() if st == "failed"]
    reason = f"point(s) {', '.join(failed)} failed" if failed else info.get("reason", "")
    code = 1 if failed or status == "failed" else 0
    if code:
        print(f"error: sweep {spec['job']['step']}: {reason}", flush=True)
    ended(spec, code, {}, reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
