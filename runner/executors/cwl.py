"""The CWL executor (`--cwl`): the workflow file's `workflowFileCWL` runs with cwltool, each tool in its step's image
(injected through --overrides). cwltool runs the whole CWL workflow in one go: the session hands it every step,
and gets back one outcome per step from cwltool's own report ("[step NAME] completed success")."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner import ui
from runner.checks import Check
from runner.cwl import CWL_KEY, PROVENANCE, cwltool, job_order, overrides
from runner.engines.base import StepRunner
from runner.errors import UsageError
from runner.executors.base import Common, Outcome, Submission, setting
from runner.limits import THREAD_VARS
from runner.workflow import StepSpec, Workflow

_LOCATED = re.compile(r"^\S+:\d+:\d+:")
_VALIDATION = re.compile(r"(failed validation|is not valid|ValidationException|Tool definition failed|"
                         r"Workflow error|contains undefined reference|Field .* is required|checking field)")
_STEP_DONE = re.compile(r"\[step ([^\]]+)\] completed (\w+)")


@dataclass
class CwlSettings:
    provenance: bool = setting(False, "keep cwltool's provenance research object (CWLProv) with the run; its "
                                      "crate links it.")


class CwlExecutor:
    name = "cwl"
    settings = CwlSettings
    orders_itself = True  # cwltool orders the steps
    records_itself = False
    whole_workflow = True  # all steps go to cwltool at once; none can be skipped on its own
    runs_as_caller = True  # cwltool runs the tools as the calling user
    single_file_images = True  # DockerRequirement.dockerImageId: one SIF
    refuses_sweeps = ""  # the CWL file scatters the sweep's step (export-cwl writes it so)
    arrays = False
    shares_cpus = True  # cwltool runs the tools on this machine (side by side with --parallel)
    status = outcomes = prepare = None

    @staticmethod
    def doctor(needs_gpu: bool) -> list:
        found = Path(cwltool()).is_file() or shutil.which(cwltool())
        return [Check("cwl", bool(found), f"cwltool {'at ' + cwltool() if found else 'not found'}",
                      "pip install cwltool (in itwin-run's environment)")]

    @classmethod
    def create(cls, common: Common, settings: CwlSettings) -> CwlExecutor:
        return cls(common.runner, common.wf, common.jobs, common.keep_going, settings.provenance)

    def __init__(self, runner: StepRunner, wf: Workflow, jobs: int = 1, keep_going: bool = False,
                 provenance: bool = False):
        self.runner, self.wf, self.jobs, self.keep_going = runner, wf, jobs, keep_going
        self.provenance = provenance  # cwltool's research object (CWLProv) goes into the run's folder
        self.subs: list[Submission] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._outcomes: list[Outcome] | None = None
        self._cancelled = False
        self.run_dir = Path(".")

    def check(self, opts, steps: list[StepSpec]) -> None:
        if opts.only or opts.from_ or opts.until:
            raise UsageError("--only/--from/--until do not apply to --cwl: cwltool runs the whole CWL workflow")
        if opts.force and opts.force != []:
            raise UsageError("--force-step does not apply to --cwl: cwltool runs the whole CWL workflow (use --force)")
        if opts.user:
            raise UsageError("--user does not apply to --cwl: cwltool runs the tools as you")
        if opts.retries or any(s.retries for s in steps):
            raise UsageError("retries do not apply to --cwl: cwltool runs each tool once")
        timed = [s.name for s in steps if s.limits.time]
        if timed:
            raise UsageError(f"resources.time ({', '.join(timed)}) does not apply to --cwl: cwltool takes time limits "
                             "only from the CWL file (ToolTimeLimit in the tool), not from itwin-run's overrides")
        if any(s.sweep and s.sweep.optuna for s in steps):
            raise UsageError("an adaptive sweep (optuna) does not run through cwltool: a CWL scatter is fixed in advance")
        if CWL_KEY not in self.wf.extra:
            raise UsageError(f"{self.wf.path}: {CWL_KEY}: --cwl needs the CWL workflow file named here")
        if not self.cwl_file.is_file():
            raise UsageError(f"{self.wf.path}: {CWL_KEY}: {self.cwl_file} not found")

    @property
    def cwl_file(self) -> Path:
        return (self.wf.root / str(self.wf.extra.get(CWL_KEY, ""))).resolve()

    def _command(self, workdir: Path) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        subs = [*self.subs, *(dataclasses.replace(s, step=self.wf.step(s.step.parent)) for s in self.subs
                              if s.step.parent)]  # a sweep's own step: the CWL step that scatters its points
        images = {s.step.name: s.job.image for s in subs}
        gpus = {s.step.name: s.job.gpus for s in subs}
        limits = {s.step.name: s.job.limits for s in subs}
        strict = []
        if any(limits.values()):
            # ResourceRequirement becomes the containers' --cpus/--memory only when cwltool is told to enforce it, and
            # then a tool with none gets cwltool's default (1 core, 256 MiB): give those the whole machine instead.
            strict = ["--strict-cpu-limit", "--strict-memory-limit"]
            whole = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
            limits = {name: dataclasses.replace(lim, cpus=lim.cpus or float(os.cpu_count() or 1),
                                                memory=lim.memory or f"{whole}M") for name, lim in limits.items()}
        threads = {s.step.name: {k: s.job.env[k] for k in THREAD_VARS if k in s.job.env} for s in subs}
        ov = overrides(self.wf, self.cwl_file, images, self.runner.cwl_output_at_dataset, gpus, limits, threads)
        args = [cwltool(), "--disable-color", *self.runner.cwltool_args, *strict,
                "--on-error", "continue" if self.keep_going else "stop"]
        if self.jobs > 1:
            args.append("--parallel")
        if self.provenance:
            args += ["--provenance", str(workdir / PROVENANCE)]
        # cwltool's own temporary and staging directories go under the run's, so nothing is left in /tmp
        args += ["--outdir", str(workdir / "out"), "--tmpdir-prefix", f"{workdir}/tmp-",
                 "--tmp-outdir-prefix", f"{workdir}/out-", "--overrides", str(workdir / "overrides.yml"),
                 str(self.cwl_file), str(workdir / "job.json")]
        return args, ov, job_order(self.wf)

    def dry_run(self, subs: list[Submission], present: dict[str, bool]) -> None:
        self.subs = subs
        args, ov, job = self._command(Path("<run>"))
        print("# cwltool command\n" + shlex.join(args))
        print("# overrides.yml\n" + yaml.safe_dump(ov, sort_keys=False), end="")
        print("# job.json\n" + json.dumps(job, indent=1))

    def start(self, run_id: str, run_dir: Path, labels: dict[str, str]) -> None:
        self.run_dir = run_dir

    def has_room(self, active: int) -> bool:
        return True

    def detached(self, active: dict[str, Submission]) -> bool:
        return False

    def submit(self, sub: Submission) -> str:
        self.subs.append(sub)
        return sub.step.name

    def poll(self, active: dict[str, Submission], timeout: float) -> list[Outcome]:
        if self._thread is None and self._cancelled:  # cancelled before cwltool started: it never will
            self._cancelled = False
            return [Outcome(s.step.name, "interrupted", ended=time.monotonic()) for s in self.subs]
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        self._thread.join(timeout)
        if self._thread.is_alive() or self._outcomes is None:
            return []
        outs, self._outcomes = self._outcomes, []
        return outs

    def _run(self) -> None:
        try:
            self._outcomes = self._cwltool()
        except Exception as exc:  # a bad CWL file, say: every step fails with it, rather than the run hanging
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._outcomes = [Outcome(s.step.name, "failed", exit_code=1, reason=reason, ended=time.monotonic())
                              for s in self.subs[:1]]
            self._outcomes += [Outcome(s.step.name, "cancelled", ended=time.monotonic()) for s in self.subs[1:]]

    def _cwltool(self) -> list[Outcome]:
        work = self.run_dir / "cwl"
        work.mkdir(parents=True, exist_ok=True)
        args, ov, job = self._command(work)
        (work / "overrides.yml").write_text(yaml.safe_dump(ov))
        (work / "job.json").write_text(json.dumps(job, indent=1))
        log_path = self.run_dir / "cwltool.log"
        tail: deque[str] = deque(maxlen=20)
        report: dict[str, str] = {}
        with open(log_path, "w") as log, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                          cwd=self.wf.root, start_new_session=True) as proc:
            self._proc = proc
            assert proc.stderr and proc.stdout
            for line in proc.stderr:
                line = line.rstrip("\n")
                tail.append(line)
                log.write(line + "\n")
                m = _STEP_DONE.search(line)
                if m:
                    report[m.group(1)] = m.group(2)
                sys.stdout.write(f"cwltool | {line}\n")
                sys.stdout.flush()
            out = proc.stdout.read()
            code = proc.wait()
        ended = time.monotonic()
        if code != 0 and any(_VALIDATION.search(ln) for ln in tail):
            raise UsageError(f"CWL validation failed: {_deepest_problem(list(tail))} (log: {log_path})")
        try:
            result = json.loads(out) if out.strip() else {}
        except json.JSONDecodeError:
            result = {}
        placed = place_outputs(self.wf, result)
        outs = []
        for s in self.subs:
            # cwltool reports each step at INFO level, which --no-warnings hides: success of the whole says it too
            # a point: what cwltool says of its sweep's step, and its folder in the dataset
            name = s.step.name
            said = report.get(s.step.parent or name) or ("success" if code == 0 else None)
            at_dataset = (self.runner.cwl_output_at_dataset or s.step.output in placed) and (
                not s.step.point or (self.wf.output_dir(s.step) or Path()).is_dir())
            if said == "success" and (at_dataset or not s.step.output):
                outs.append(Outcome(name, "done", exit_code=0, ended=ended))
            elif said == "success":
                outs.append(Outcome(name, "failed", exit_code=code or 1, ended=ended,
                                    reason=f"step {name!r}: its output stayed in cwltool's staging directory"))
            elif said:
                outs.append(Outcome(name, "failed", exit_code=code or 1, tail=list(tail), ended=ended,
                                    reason=f"step {name!r}: cwltool reports {said} (log: {log_path})"))
            else:
                outs.append(Outcome(name, "cancelled", ended=ended))
        if code != 0 and not any(o.status == "failed" for o in outs):
            first = next((o for o in outs if o.status != "done"), outs[0])
            first.status, first.exit_code, first.tail = "failed", code, list(tail)
            first.reason = f"cwltool failed with exit code {code} (log: {log_path})"
        return outs

    def cancel(self, active: dict[str, Submission], force: bool, interrupted: bool = True) -> None:
        """cwltool's process group holds its `docker run` clients (which pass the signal on to their containers) or
        its apptainer processes: signalling the group stops them all."""
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _deepest_problem(lines: list[str]) -> str:
    """cwltool's validation report is a tree of `file:line:col: message` lines; the last one is the cause."""
    located = [i for i, ln in enumerate(lines) if _LOCATED.match(ln)]
    if not located:
        return " ".join(ln.strip() for ln in lines if _VALIDATION.search(ln))[:300]
    i = located[-1]
    text = [lines[i]] + [ln for ln in lines[i + 1:] if ln.startswith(" ")]
    return re.sub(r"\s+", " ", " ".join(t.strip() for t in text))[:300]


def place_outputs(wf: Workflow, result: dict[str, Any]) -> set[str]:
    """Workflow outputs named like datasets land in those datasets (returns their names). A dataset that already
    held something (the MLflow store of earlier runs, say) is kept beside it, renamed with the time, and said so:
    nothing is lost."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    placed = set()
    for name, value in result.items():
        if name not in wf.datasets or not isinstance(value, dict) or value.get("class") != "Directory":
            continue
        src, dest = Path(value["path"]), wf.datasets[name]
        placed.add(name)
        # cwltool's output folders are private (0700): a dataset is read by later steps, which may run as another
        # user (steps run unprivileged when itwin-run is root), so it gets a dataset's usual mode
        src.chmod(src.stat().st_mode | 0o755)
        if src.resolve() == dest:
            continue
        if dest.exists() and any(not p.is_dir() or p.is_symlink() for p in dest.rglob("*")):
            kept = dest.with_name(f"{dest.name}.before-{stamp}")
            dest.rename(kept)
            ui.say(f"note: the earlier contents of dataset {name} are kept in {kept}", "yellow")
        elif dest.exists():  # empty, or empty folders (a sweep's points, made for them before cwltool ran)
            shutil.rmtree(dest)
        shutil.move(str(src), dest)
        ui.say(f" {name} -> {dest}", "green", prefix="output")
    return placed
