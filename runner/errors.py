"""Errors a user can act on: printed as one line each, never as a traceback.

Exit codes: 2 for a usage or workflow problem (bad flag, bad file, refused mount), 1 for the machine's side (engine,
daemon, registry, build), the step's own code when a step fails, 128 + the signal when interrupted."""

from __future__ import annotations

import signal

# Every code itwin-run exits with, and when (the documentation's exit-code table is made from this).
EXIT_CODES = [
    ("0", "success: every selected step is done or up to date"),
    ("1", "the machine's side: the engine or its daemon, a registry, an image build, a step the engine refused, a "
          "sweep whose points wrote no metric"),
    ("2", "a usage or workflow problem: a bad flag or combination, a bad or missing file, a refused mount (nothing "
          "was started)"),
    ("N", "a step failed with exit code N: the run exits with the first failed step's own code"),
    ("130, 143, 129, 131", "interrupted: 128 + the signal (Ctrl-C, SIGTERM, a hang-up, SIGQUIT); steps not finished "
                           "are recorded interrupted"),
]


class UserError(Exception):
    """A problem with the user's input or environment; `exit_code` is what the CLI exits with."""

    exit_code = 1


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
    """A step exited non-zero; the run exits with the step's own code."""

    def __init__(self, step: str, code: int, tail: list[str], log: str, reason: str = ""):
        self.step, self.code, self.tail, self.log = step, code, tail, log
        self.exit_code = code if 0 < code < 256 else 1
        super().__init__(reason or f"step {step!r} failed with exit code {code} (log: {log})")


# Every signal that ends a runner ends its run the same way: steps stopped, nothing marked complete, 128 + N.
ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupted(Exception):
    """Ctrl-C, SIGTERM, SIGHUP or SIGQUIT: `code` is what the run exits with (128 + the signal: 130, 143, 129,
    131)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code
