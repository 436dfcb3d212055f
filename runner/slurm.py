"""The SLURM executor: each step becomes one sbatch job (afterok on the jobs of the steps it needs) whose script
runs the step through the chosen engine (`python -m runner.stepjob`); itwin-run follows the jobs with scontrol."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner import ui
from runner.engines.base import Engine
from runner.errors import StepFailed, UserError
from runner.executor import Runner, RunOptions, job_for, prepare_output, resolve_images, select
from runner.workflow import StepSpec, Workflow, dependencies

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    extra: list[str] = field(default_factory=list)
    detach: bool = False
    cancel_on_exit: bool = False
    dry_run: bool = False
    poll: float = 0.2


def _cmd(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{args[0]} not found: the SLURM executor needs SLURM's client commands on PATH") from None
    if proc.returncode != 0:
        raise UserError(f"{' '.join(args[:2])} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout


def job_state(job_id: str) -> dict[str, str]:
    out = _cmd(["scontrol", "show", "job", "-o", job_id])
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


class SlurmExecutor(Runner):
    """Reuses the local Runner's selection, fingerprints and manifests; steps run as batch jobs."""

    def __init__(self, wf: Workflow, engine: Engine, opts: RunOptions, slurm: SlurmOptions):
        super().__init__(wf, engine, opts)
        self.slurm = slurm
        self.jobs: dict[str, str] = {}

    def script(self, step: StepSpec, spec_file: Path, deps: list[str]) -> str:
        s = step.slurm
        lines = ["#!/bin/bash", f"#SBATCH --job-name=itwin-{step.name}", f"#SBATCH --output={self.run_dir / step.name}.log",
                 f"#SBATCH --chdir={self.wf.root}"]
        if deps:
            lines += [f"#SBATCH --dependency=afterok:{':'.join(deps)}", "#SBATCH --kill-on-invalid-dep=yes"]
        opts = {"partition": (s and s.partition) or self.slurm.partition, "time": (s and s.time) or self.slurm.time,
                "account": (s and s.account) or self.slurm.account, "nodes": s and s.nodes,
                "ntasks-per-node": s and s.ntasks_per_node, "cpus-per-task": s and s.cpus_per_task, "mem": s and s.mem}
        lines += [f"#SBATCH --{k}={v}" for k, v in opts.items() if v]
        gpus = self.opts.gpus if self.opts.gpus is not None else step.gpus
        if gpus:
            count = gpus if isinstance(gpus, int) else (len(gpus) if isinstance(gpus, list) else 1)
            lines.append(f"#SBATCH --gres=gpu:{count}")
        lines += [f"#SBATCH {x}" for x in [*self.slurm.extra, *((s and s.extra) or [])]]
        run = f"{shlex.quote(sys.executable)} -m runner.stepjob {shlex.quote(str(spec_file))}"
        tasks = ((s and s.nodes) or 1) * ((s and s.ntasks_per_node) or 1)
        lines.append(f"srun --kill-on-bad-exit=1 {run}" if tasks > 1 else f"exec {run}")
        return "\n".join(lines) + "\n"

    def run(self) -> None:
        steps = select(self.wf, self.opts)
        sub = Workflow(path=self.wf.path, root=self.wf.root, datasets=self.wf.datasets, steps=steps, extra=self.wf.extra)
        images = resolve_images(sub, self.engine, self.opts.build, lock=self.opts.lock)
        names = {s.name for s in steps}
        deps = {s.name: {d for d in dependencies(self.wf)[s.name] if d in names} for s in steps}
        if not self.slurm.dry_run:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = {"run_id": self.run_id, "workflow": str(self.wf.path), "root": str(self.wf.root),
                         "engine": self.engine.name, "executor": "slurm", "started": time.time(), "status": "submitted",
                         "steps": {}, "jobs": self.jobs}
        for step in steps:
            image = images[step.name][0]
            upstream = [self.jobs[d] for d in deps[step.name] if d in self.jobs]
            if not upstream and not self.slurm.dry_run and self._up_to_date(step, image):
                self._finish(step, "up to date")
                continue
            job = job_for(self.wf, step, image, self.opts, self.run_id)
            output = self.wf.datasets[step.output] if step.output else None
            spec_file = self.run_dir / f"{step.name}.job.json"
            spec = json.dumps({
                "engine": self.engine.name, "run_id": self.run_id, "root": str(self.wf.root),
                "output": str(output) if output else None, "fingerprint_parts": self.fingerprint_parts(step, image),
                "inputs": {d: str(self.wf.datasets[d]) for d in step.inputs},
                "job": {**dataclasses.asdict(job), "workdir": str(job.workdir),
                        "mounts": [{"source": str(m.source), "target": str(m.target), "read_only": m.read_only}
                                   for m in job.mounts]}}, indent=1, default=str)
            script = self.script(step, spec_file, upstream)
            if self.slurm.dry_run:
                print(f"# ---- {step.name}.sbatch\n{script}")
                self.jobs[step.name] = f"<{step.name}>"
                continue
            spec_file.write_text(spec)
            if output:
                prepare_output(output, job.user)
            self.state.forget(step.name)
            (self.run_dir / f"{step.name}.sbatch").write_text(script)
            job_id = _cmd(["sbatch", "--parsable", str(self.run_dir / f"{step.name}.sbatch")]).strip().split(";")[0]
            self.jobs[step.name] = job_id
            self.manifest["steps"][step.name] = {"image": image, "engine": self.engine.name, "argv": job.argv,
                                                 "job_id": job_id, "status": "PENDING", "log": f"{self.run_dir / step.name}.log"}
            ui.say(f"submitted {step.name} as job {job_id}" + (f" (after {', '.join(upstream)})" if upstream else ""))
        if self.slurm.dry_run or not self.jobs:
            return
        self.state.write_manifest(self.run_id, self.manifest)
        if self.slurm.detach:
            ui.say(f"run {self.run_id}: follow it with `itwin-run status {self.run_id}`")
            return
        self.follow(steps)

    def follow(self, steps: list[StepSpec]) -> None:
        offsets: dict[str, int] = {}
        final: dict[str, dict[str, str]] = {}
        try:
            while len(final) < len(self.jobs):
                for name, job_id in self.jobs.items():
                    if name in final:
                        continue
                    info = job_state(job_id)
                    self._tail(name, offsets)
                    state = info.get("JobState", "?")
                    if state == "PENDING" and info.get("Reason") == "DependencyNeverSatisfied":
                        state = "CANCELLED"
                    if self.manifest["steps"][name].get("status") != state:
                        self.manifest["steps"][name]["status"] = state
                        ui.say(f"{name}: {state}", "green" if state == "COMPLETED" else
                               "red" if state in FINAL else "dim")
                    if state in FINAL:
                        final[name] = info
                        self._tail(name, offsets)
                time.sleep(self.slurm.poll)
        except KeyboardInterrupt:
            active = [j for n, j in self.jobs.items() if n not in final]
            if self.slurm.cancel_on_exit or (sys.stdin.isatty() and input(
                    f"\ncancel the run's {len(active)} unfinished jobs? [y/N] ").strip().lower() == "y"):
                subprocess.run(["scancel", *active])
                ui.say(f"cancelled jobs {' '.join(active)}", "yellow")
            else:
                ui.say(f"the jobs go on: `itwin-run status {self.run_id}`, `scancel {' '.join(active)}`", "yellow")
            self.manifest["status"] = "interrupted"
            self.state.write_manifest(self.run_id, self.manifest)
            raise
        failed = [(n, info) for n, info in final.items() if info.get("JobState") != "COMPLETED"]
        self.manifest["status"] = "failed" if failed else "succeeded"
        self.manifest["ended"] = time.time()
        self.state.write_manifest(self.run_id, self.manifest)
        for s in steps:
            st = self.manifest["steps"].get(s.name, {}).get("status") or self.status.get(s.name, "up to date")
            ui.say(f"  {s.name:<20} {st}")
        first = next(((n, info) for n, info in failed if info.get("JobState") != "CANCELLED"), failed[0] if failed else None)
        if first:
            name, info = first
            code = int(re.match(r"(\d+)", info.get("ExitCode", "1:0")).group(1)) or 1  # type: ignore[union-attr]
            log = self.run_dir / f"{name}.log"
            tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
            raise StepFailed(name, code, tail, str(log))

    def _tail(self, name: str, offsets: dict[str, int]) -> None:
        log = self.run_dir / f"{name}.log"
        if not log.exists():
            return
        with open(log, errors="replace") as f:
            f.seek(offsets.get(name, 0))
            data = f.read()
            if "\n" not in data:
                return
            complete, _, _ = data.rpartition("\n")
            offsets[name] = offsets.get(name, 0) + len((complete + "\n").encode())
        for line in complete.split("\n"):
            sys.stdout.write(f"{name} | {line}\n")
        sys.stdout.flush()


def status(root: Path, run_id: str) -> list[tuple[str, str, str]]:
    from runner.state import State

    m = State(root).manifest(run_id)
    rows = []
    for name, info in m.get("steps", {}).items():
        job_id = info.get("job_id")
        state = job_state(job_id).get("JobState", "?") if job_id else info.get("status", "?")
        rows.append((name, job_id or "-", state))
    return rows
