"""Errors a user can act on: printed as one line each, never as a traceback.

Exit codes (EXIT_CODES): 0 success, 1 a step failed, 2 a usage or workflow problem (nothing started), 3 the machine
cannot run it (engine, daemon, registry, build, permissions), 128 + the signal when interrupted."""

from __future__ import annotations

import signal

# Every code itwin-run exits with, and when (`--help`, the README and the documentation's table are made from this).
EXIT_CODES = [
    ("0", "success: every selected step is done or up to date"),
    ("1", "a step failed: its own exit code, or why the engine stopped it, is in the message and the run's record"),
    ("2", "the workflow or the command line is wrong: a bad flag or combination, a bad or missing file, a refused "
          "mount, a run id that does not exist (nothing was started)"),
    ("3", "the machine cannot run it: the engine or its daemon, a registry, an image build, permissions, another "
          "run holding the project"),
    ("130, 143, 129, 131", "interrupted: 128 + the signal (Ctrl-C, SIGTERM, a hang-up, SIGQUIT); steps not finished "
                           "are recorded interrupted"),
]


class UserError(Exception):
    """Something on the machine's side stops the run (engine, daemon, registry, build, permissions); subclasses
    for the other rows of EXIT_CODES. `exit_code` is what the CLI exits with."""

    exit_code = 3


class UsageError(UserError):
    """A flag, a flag combination or a workflow that cannot be run as asked: nothing was started."""

    exit_code = 2


class ValidationError(UsageError):
    """One or more problems in a workflow file, each `file:line: field: message`."""

    def __init__(self, problems: list[str]):
        # one line each, whatever the file held (a key with a newline, say)
        self.problems = [p.encode("unicode_escape").decode("ascii") if not p.isprintable() else p for p in problems]
        super().__init__("\n".join(problems))


class StepFailed(UserError):
    """A step failed (its own exit code is `code`, in the message and the record); the run exits with 1."""

    exit_code = 1

    def __init__(self, step: str, code: int, tail: list[str], log: str, reason: str = ""):
        self.step, self.code, self.tail, self.log = step, code, tail, log
        super().__init__(reason or f"step {step!r} failed with exit code {code} (log: {log})")


# Every signal that ends a runner ends its run the same way: steps stopped, nothing marked complete, 128 + N.
ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupted(Exception):
    """Ctrl-C, SIGTERM, SIGHUP or SIGQUIT: `code` is what the run exits with (128 + the signal: 130, 143, 129,
    131)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code
