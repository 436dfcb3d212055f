"""The SLURM executor: each step is one sbatch job (afterok on the jobs of the steps it needs) whose script runs the
step through the chosen engine (`python -m runner.stepjob`). One `squeue` call per poll follows all the run's jobs,
at most one a second; the step jobs write their exit code and step record themselves (they outlive --detach)."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from runner import ui
from runner.engines.watchdog import Watchdog
from runner.errors import UsageError, UserError
from runner.executors.base import Common, Outcome, Submission, no, setting
from runner.limits import PARTITION, SBATCH_FLAG, SLURM_TIME, sbatch_flag
from runner.workflow import StepSpec, needs

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}
POLL = 1.0  # seconds between controller calls, whatever the number of jobs


def command(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{args[0]} not found: the SLURM executor needs SLURM's client commands on PATH") from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{' '.join(args[:2])} failed: {last[0]}")
    return proc.stdout


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, reason) for the jobs the controller still knows: one squeue call."""
    if not job_ids:
        return {}
    out = command(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])  # -r: each array task
    rows = [line.strip().split("|") for line in out.splitlines()]
    return {parts[0]: (parts[1], parts[2]) for parts in rows if len(parts) == 3}


def accounting_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, exit code) from sacct, for jobs that left the controller (none without accounting)."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode"],
                              capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    if proc.returncode != 0:
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1].split()[0], parts[2])
    return out


def job_states(jobs: dict[str, Path]) -> dict[str, tuple[str, int | None]]:
    """job id -> (state, the step's exit code if its job wrote one), for jobs given with their step logs: squeue
    for the jobs the controller knows (one call), sacct for those that left it, else what the job wrote (UNKNOWN
    when it wrote nothing)."""
    queued = queue_states(list(jobs))
    gone = [j for j in jobs if j not in queued]
    accounted = accounting_states(gone) if gone else {}
    out = {}
    for job_id, log in jobs.items():
        code = exit_code(log)
        state, reason = queued.get(job_id) or accounted.get(job_id) or ("", "")
        if not state:
            state = "COMPLETED" if code == 0 else "FAILED" if code is not None else "UNKNOWN"
        if state == "PENDING" and reason == "DependencyNeverSatisfied":
            state = "CANCELLED"
        out[job_id] = (state, code)
    return out


def exit_code(log: Path) -> int | None:
    """The step's own exit code, written by its job (runner.stepjob) beside its log; None if it never ran."""
    try:
        return int(log.with_suffix(".exit").read_text().strip())
    except (OSError, ValueError):
        return None


def outcomes(manifest: dict) -> dict[str, str] | None:
    """How a detached run's steps ended (step -> done, failed or interrupted), or None while any of its jobs is
    still queued or running."""
    steps = {name: info for name, info in manifest.get("steps", {}).items() if info.get("handle")}
    states = job_states({info["handle"]: Path(info.get("log", "")) for info in steps.values()}) if steps else {}
    if any(state not in FINAL and state != "UNKNOWN" for state, _ in states.values()):
        return None
    out = {}
    for name, info in steps.items():
        state, code = states[info["handle"]]
        out[name] = ("done" if state == "COMPLETED" and code == 0 else "interrupted" if state == "CANCELLED"
                     else "failed")
    return out


def status(root: Path, run_id: str) -> list[tuple[str, str, str]]:
    """(step, job id, state) of a run's steps, as job_states() finds them now."""
    from runner.state import State

    steps = State(root).manifest(run_id).get("steps", {})
    jobs = {info["handle"]: Path(info.get("log", "")) for info in steps.values() if info.get("handle")}
    states = job_states(jobs) if jobs else {}
    return [(name, info.get("handle", "-"), states[info["handle"]][0] if info.get("handle") else info.get("status", "?"))
            for name, info in steps.items()]


def doctor(needs_gpu: bool) -> list:
    """The SLURM side of `itwin-run doctor`."""
    from runner.checks import Check, which

    checks, present = which("slurm", ["sbatch", "squeue", "scontrol", "scancel"],
                            "load SLURM's client commands (`module load slurm`) or run on a login node")
    if not present:
        return checks
    proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    up = proc.returncode == 0 and "UP" in proc.stdout
    checks.append(Check("slurm", up, "controller: " + (proc.stdout.strip() or proc.stderr.strip() or "no answer"),
                        "check SLURM_CONF and that slurmctld runs"))
    acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True) if shutil.which("sacct") else None
    checks.append(Check("slurm", None, "sacct answers (status of finished jobs)" if acct and acct.returncode == 0 else
                        "no accounting: `itwin-run status` reads what the jobs wrote"))
    return checks


@dataclass
class SlurmSettings:
    partition: str | None = setting(None, "default partition.")
    time: str | None = setting(None, "default time limit.")
    account: str | None = setting(None, "default account.")
    qos: str | None = setting(None, "default quality of service.")
    gres: str | None = setting(None, "the site's generic resource name for GPUs: --gres=NAME:COUNT (gpu).")
    cpus_per_gpu: int | None = setting(None, "CPUs per GPU for GPU steps (--cpus-per-gpu), where the site takes it.")
    sbatch_arg: list[str] = setting([], "extra sbatch option, --flag[=value] (repeatable).")
    setup: list[str] = setting([], "a shell line each job runs before its step: `module load apptainer` (repeatable).")
    detach: bool = setting(False, "return after submission (`itwin-run status RUN` later).")
    cancel_on_exit: bool = setting(False, "scancel the run's jobs on Ctrl-C.")


@dataclass
class SlurmExecutor:
    own: SlurmSettings = field(default_factory=SlurmSettings)  # its flags, or a site profile's defaults
    engine: str = "docker"
    ask: Callable[[str], bool] = no  # the user's yes/no on Ctrl-C: cancel the jobs?
    name: str = "slurm"
    settings: ClassVar[type] = SlurmSettings
    orders_itself: bool = True
    records_itself: bool = True
    whole_workflow: bool = False
    runs_as_caller: bool = False
    single_file_images: bool = False
    arrays: bool = True  # a sweep's points go as one job array (submit_array)
    shares_cpus: bool = False
    refuses_sweeps: ClassVar[str] = ""  # with --detach, a job of its own picks the best point (runner.stepjob)
    doctor: ClassVar = staticmethod(doctor)
    status: ClassVar = staticmethod(status)
    outcomes: ClassVar = staticmethod(outcomes)
    prepare: ClassVar = None  # the job's own process starts its container

    @classmethod
    def create(cls, common: Common, settings: SlurmSettings) -> SlurmExecutor:
        return cls(settings, common.runner.name, common.ask)

    def __post_init__(self) -> None:
        self.run_id, self.run_dir = "", Path(".")
        self._last_poll = 0.0
        self._offsets: dict[str, int] = {}
        self._seen: dict[str, str] = {}
        self._handles: dict[str, str] = {}  # step -> job id
        self._watchdog = Watchdog()  # --cancel-on-exit: scancels the jobs should this process be killed outright

    def check(self, opts, steps: list[StepSpec]) -> None:
        own = self.own
        for flag, value, pattern in (("--partition", own.partition, PARTITION), ("--account", own.account, PARTITION),
                                     ("--time", own.time, SLURM_TIME), ("--qos", own.qos, PARTITION),
                                     ("--gres", own.gres, PARTITION)):
            if value is not None and not re.fullmatch(pattern, value):
                raise UsageError(f"{flag}: {value!r} is not a SLURM {flag[2:]}")
        for x in self.own.sbatch_arg:
            try:
                if not re.fullmatch(SBATCH_FLAG, sbatch_flag(x)):
                    raise ValueError("not one --flag[=value] token")
            except ValueError as exc:
                raise UsageError(f"--sbatch-arg: {x!r}: {exc}") from None
        if any("\n" in x or "\0" in x for x in self.own.setup):
            raise UsageError("--setup: one shell line each (no line break)")
        if opts.jobs > 1:
            raise UsageError("--jobs does not apply to --executor slurm: the cluster runs independent steps at once")
        if self.own.detach and any(s.sweep and s.sweep.optuna for s in steps):
            raise UsageError("--detach: an adaptive sweep (optuna) asks each wave of trials once the last one ended, here")
        if opts.keep_going:
            raise UsageError("--keep-going does not apply to --executor slurm: a failed job cancels its dependents "
                             "and the others run on")

    # ------------------------------------------------------------ scripts

    def script(self, sub: Submission, spec_file: Path, array: list[Submission] | None = None,
               parallel: int | None = None) -> str:
        """The batch script of a step; of a sweep's points (`array`, `sub` the first) as one job array, each task
        the point of its index, with its own log, at most `parallel` at once."""
        s = sub.step.slurm
        name = sub.step.parent if array else sub.step.name
        lines = ["#!/bin/bash", f"#SBATCH --job-name=itwin-{name}",
                 f"#SBATCH --output={'/dev/null' if array else sub.log}", f"#SBATCH --chdir={sub.job.workdir}"]
        if array:
            lines.append(f"#SBATCH --array=0-{len(array) - 1}" + (f"%{parallel}" if parallel else ""))
        if sub.after:  # a sweep's pick runs however its points ended (it says which failed)
            kind = "afterany" if sub.step.sweep else "afterok"
            lines += [f"#SBATCH --dependency={kind}:{':'.join(sub.after)}", "#SBATCH --kill-on-invalid-dep=yes"]
        # resources: map to SLURM's own options; a step's `slurm:` values, where given, are more specific
        limits, gpus = sub.job.limits, sub.job.gpus
        per_gpu = self.own.cpus_per_gpu if gpus else None  # SLURM takes it or --cpus-per-task, not both
        seconds = math.ceil(limits.seconds) if limits.time else None
        opts = {"partition": (s and s.partition) or self.own.partition,
                "time": (s and s.time) or (f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
                                           if seconds else None) or self.own.time,
                "account": (s and s.account) or self.own.account, "qos": self.own.qos, "nodes": s and s.nodes,
                "ntasks-per-node": s and s.ntasks_per_node,
                "cpus-per-task": None if per_gpu else (s and s.cpus_per_task) or (math.ceil(limits.cpus) if
                                                                                  limits.cpus else None),
                "cpus-per-gpu": per_gpu,
                "mem": (s and s.mem) or (f"{math.ceil((limits.memory_bytes or 0) / 2**20)}M" if limits.memory else None)}
        lines += [f"#SBATCH --{k}={v}" for k, v in opts.items() if v]
        if gpus:
            count = gpus if isinstance(gpus, int) else (len(gpus) if isinstance(gpus, list) else 1)
            lines.append(f"#SBATCH --gres={self.own.gres or 'gpu'}:{count}")
        lines += [f"#SBATCH {x}" for x in [*self.own.sbatch_arg, *((s and s.extra) or [])]]
        for line in lines:  # validated fields; this is the last guard against a line break into the script
            if "\n" in line or "\0" in line:
                raise UsageError(f"step {sub.step.name!r}: a SLURM option holds a line break")
        run = f"{shlex.quote(sys.executable)} -m runner.stepjob {shlex.quote(str(spec_file))}"
        if array:  # the task's own spec and log, by its index
            quoted = " ".join(shlex.quote(str(self.run_dir / f"{p.step.name}.job.json")) for p in array)
            logs = " ".join(shlex.quote(str(p.log)) for p in array)
            lines += [f"specs=({quoted})", f"logs=({logs})", 'exec >"${logs[$SLURM_ARRAY_TASK_ID]}" 2>&1']
            run = f'{shlex.quote(sys.executable)} -m runner.stepjob "${{specs[$SLURM_ARRAY_TASK_ID]}}"'
        lines += self.own.setup  # the site's own lines (modules to load): after every option, before the step
        tasks = ((s and s.nodes) or 1) * ((s and s.ntasks_per_node) or 1)
        lines.append(f"srun --kill-on-bad-exit=1 {run}" if tasks > 1 else f"exec {run}")
        return "\n".join(lines) + "\n"

    def _spec(self, sub: Submission) -> str:
        step, pick = sub.step, None
        if step.sweep:  # its pick: each point's values and exit file (None: up to date, it did not run)
            ran = {p.slug: self.run_dir / f"{step.name}.{p.slug}.exit" for p in step.points
                   if f"{step.name}.{p.slug}" in self._handles}
            pick = {"best": step.sweep.best.model_dump(),
                    "points": {p.slug: [p.values, str(ran[p.slug]) if p.slug in ran else None] for p in step.points}}
        return json.dumps({"engine": self.engine, "run_id": self.run_id, "root": str(sub.job.workdir), "key": sub.key,
                           "output": sub.output, "parts": sub.parts, "inputs": sub.inputs, "job": sub.job.to_dict(),
                           "exit_file": str(sub.log.with_suffix(".exit")), **({"pick": pick} if pick else {}),
                           "allow_empty_output": sub.step.allow_empty_output}, indent=1, default=str)

    def dry_run(self, subs: list[Submission], present: dict[str, bool]) -> None:
        handles, upstream = {}, needs([s.step for s in subs])
        for sub in subs:
            sub.after = [handles[u] for u in sorted(upstream[sub.step.name]) if u in handles]
            handles[sub.step.name] = f"<{sub.step.parent or sub.step.name}>"
            points = [p for p in subs if sub.step.parent and p.step.parent == sub.step.parent]
            if not points:
                print(f"# ---- {sub.step.name}.sbatch\n{self.script(sub, sub.log.with_suffix('.job.json'))}")
            elif sub is points[0]:  # a sweep's points: one job array (its `parallel` becomes %N when submitted)
                print(f"# ---- {sub.step.parent}.sbatch\n{self.script(sub, sub.log.with_suffix('.job.json'), points)}")

    # ------------------------------------------------------------ submit / poll / cancel

    def start(self, run_id: str, run_dir: Path, labels: dict[str, str]) -> None:
        self.run_id, self.run_dir = run_id, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)

    def has_room(self, active: int) -> bool:
        return True

    def detached(self, active: dict[str, Submission]) -> bool:
        return self.own.detach and bool(active)

    def submit(self, sub: Submission) -> str:
        job_id = self._sbatch(sub, [sub])
        self._handles[sub.step.name] = job_id
        ui.say(f"submitted {sub.step.name} as job {job_id}" + (f" (after {', '.join(sub.after)})" if sub.after else ""))
        return job_id

    def submit_array(self, subs: list[Submission], parallel: int | None) -> list[str]:
        """A sweep's points as one job array (one sbatch call), at most `parallel` tasks at once; the tasks'
        handles (JOB_INDEX), in the order given. One point is a job of its own."""
        if len(subs) == 1:
            return [self.submit(subs[0])]
        job_id = self._sbatch(subs[0], subs, parallel)
        handles = [f"{job_id}_{i}" for i in range(len(subs))]
        self._handles.update((sub.step.name, h) for sub, h in zip(subs, handles, strict=True))
        ui.say(f"submitted the {len(subs)} points of {subs[0].step.parent} as job array {job_id}"
               + (f" ({parallel} at a time)" if parallel else "") + (f" (after {', '.join(subs[0].after)})"
                                                                   if subs[0].after else ""))
        return handles

    def _sbatch(self, sub: Submission, subs: list[Submission], parallel: int | None = None) -> str:
        """Write the specs and the batch script of one step (or of a sweep's points, as an array); its job id."""
        for each in subs:
            for stale in (each.log.with_suffix(".exit"), each.log.with_suffix(".usage.json")):  # an earlier attempt's
                stale.unlink(missing_ok=True)
            (self.run_dir / f"{each.step.name}.job.json").write_text(self._spec(each))
        array = subs if len(subs) > 1 else None
        name = sub.step.parent if array else sub.step.name
        script = self.run_dir / f"{name}.sbatch"
        script.write_text(self.script(sub, self.run_dir / f"{sub.step.name}.job.json", array, parallel))
        job_id = command(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
        if self.own.cancel_on_exit:
            self._watchdog.job(job_id)
        return job_id

    def poll(self, active: dict[str, Submission], timeout: float) -> list[Outcome]:
        wait = self._last_poll + POLL - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max(timeout, 0.05)))
            if self._last_poll + POLL > time.monotonic():
                return []
        self._last_poll = time.monotonic()
        ids = {self._handles[name]: name for name in active}
        states = job_states({j: active[n].log for j, n in ids.items()})
        outs = []
        for job_id, name in ids.items():
            sub = active[name]
            self._tail(sub)
            state, code = states[job_id]
            if self._seen.get(name) != state:
                self._seen[name] = state
                ui.say(f"{name}: {state}", "green" if state == "COMPLETED" else "red" if state in FINAL else "dim")
            if state not in FINAL and state != "UNKNOWN":
                continue
            used = _usage(sub.log)
            if state == "COMPLETED" and code == 0:
                outs.append(Outcome(name, "done", exit_code=0, ended=time.monotonic(), usage=used))
                continue
            tail = sub.log.read_text(errors="replace").splitlines()[-20:] if sub.log.exists() else []
            if state == "CANCELLED" and code is None:
                outs.append(Outcome(name, "cancelled", reason=f"job {job_id} of step {name!r} was cancelled",
                                    ended=time.monotonic()))
                continue
            why = used.pop("reason", "") or ("" if state in ("COMPLETED", "FAILED") else
                                               f"job {job_id} of step {name!r} ended {state}")
            outs.append(Outcome(name, "failed", exit_code=code or 1, reason=why, tail=tail, ended=time.monotonic(),
                                usage=used))
        return outs

    def cancel(self, active: dict[str, Submission], force: bool, interrupted: bool = True) -> None:
        """A failed step: scancel the others. Ctrl-C: with --cancel-on-exit (or a yes on a terminal) scancel them,
        else leave them running and detach."""
        ids = [self._handles[n] for n in active]
        if not ids or self.own.detach:
            return
        if force or not interrupted or self.own.cancel_on_exit or self.ask(
                f"cancel the run's {len(ids)} unfinished jobs?"):
            subprocess.run(["scancel", *ids])
            ui.say(f"cancelled jobs {' '.join(ids)}", "yellow")
        else:
            ui.say(f"the jobs go on: `itwin-run status {self.run_id}`, `scancel {' '.join(ids)}`", "yellow")
            self.own.detach = True

    def close(self) -> None:
        self._watchdog.close()

    def _tail(self, sub: Submission) -> None:
        log, name = sub.log, sub.step.name
        if not log.exists():
            return
        with open(log, errors="replace") as f:
            f.seek(self._offsets.get(name, 0))
            data = f.read()
            if "\n" not in data:
                return
            complete, _, _ = data.rpartition("\n")
            self._offsets[name] = self._offsets.get(name, 0) + len((complete + "\n").encode())
        for line in complete.split("\n"):
            sys.stdout.write(f"{name} | {line}\n")
        sys.stdout.flush()


def _usage(log: Path) -> dict:
    """What the step job measured (runner.stepjob writes it beside the exit code); {} where it did not get there."""
    try:
        used = json.loads(log.with_suffix(".usage.json").read_text())
    except (OSError, ValueError):
        return {}
    if not used.get("reason"):
        used.pop("reason", None)
    return used
