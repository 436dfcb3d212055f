"""What a build's log says: which layer and pip phase it is at, and a failed build in a few lines."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner import ui

ERROR_LINE = re.compile(r"(error|ERROR|E: |No matching distribution|Could not find|failed|returned a non-zero)")


_DECISIVE = re.compile(r"(No matching distribution found for .*|Could not find a version that satisfies .*|"
                       r"ResolutionImpossible.*|Cannot install .*|conflicting dependencies.*|No space left on device)")


def build_error(ref: str, step: str, error: str, lines: list[str], env_file: Path | None) -> str:
    """A failed build in a few lines: pip's decisive line first, naming the user's env file rather than the
    requirements.txt the image was built from, then the lines around the failure."""
    def mine(line: str) -> str:
        if env_file is None:
            return line
        return re.sub(r"-r requirements\.txt \(line (\d+)\)", lambda m: f"{env_file}" + (
            f" (line {m.group(1)})" if env_file.suffix not in (".yml", ".yaml") else ""), line)

    if "no space left on device" in "\n".join(lines).lower():
        return f"build of {ref} for step {step!r} failed: no space left on device (free disk space, e.g. `docker image prune`)"
    decisive = next((m.group(1) for ln in reversed(lines) if (m := _DECISIVE.search(ln))), None)
    head = mine(decisive) if decisive else mine(error.splitlines()[-1] if error else "")
    where = f" (env file {env_file})" if env_file else ""
    # docker's own "The command '/bin/sh -c pip install … -r requirements.txt' returned …" says nothing more
    lines = [ln for ln in lines if not ln.startswith("The command '/bin/sh -c ")] or lines
    failing = [mine(ln) for ln in lines if ERROR_LINE.search(ln)][-12:] or [mine(ln) for ln in lines[-12:]]
    detail = "\n".join("  " + ln for ln in failing if decisive is None or ln.strip() != head)
    return f"build of {ref} for step {step!r} failed{where}: {head}" + (f"\n{detail}" if detail else "")



class BuildPhase:
    """Which layer a build is at (Dockerfile.pip's, Dockerfile.sources') and what pip is doing there, from the build's lines."""

    PIP = (("Collecting", "resolving"), ("Downloading", "downloading"), ("Processing", "resolving"),
           ("Building wheel", "building wheels"), ("Installing collected", "installing"),
           ("Successfully installed", "installed"), ("Successfully built", "built"))

    def __init__(self) -> None:
        self.layer, self.pip = "base", ""

    def see(self, line: str) -> None:
        text = line.strip()
        if m := re.match(r"(?i)step \d+/\d+ ?: (.*)", text):  # Docker's "Step 2/5 : X", Podman's "STEP 2/5: X"
            instruction = m.group(1)
            self.pip = ""
            if "-r requirements.txt" in instruction:
                self.layer = "dependencies"
            elif "build-sources.py" in instruction or "itwin-wheels" in instruction:
                self.layer = "sources"
            elif instruction.startswith("RUN"):
                self.layer = instruction[4:40]
            return
        for prefix, phase in self.PIP:
            if text.startswith(prefix):
                self.pip = phase

    def __str__(self) -> str:
        return f"{self.layer} layer" + (f", pip {self.pip}" if self.pip else "")


class BuildProgress:
    """What a running build shows: on a terminal, a status line whose seconds count every second (the layer, pip's
    phase, the build's latest line); elsewhere (CI, `| tee`), a start line and then a line every 20 s from the start,
    whether or not the build said anything new. Layer ids and Docker's bookkeeping lines are never the latest line."""

    QUIET = re.compile(r"^ ?-{2,3}> |^Removing intermediate container |^ ?-{2,3}> Running in |^Successfully tagged ")

    def __init__(self, ref: str, step: str, status: Any, terminal: bool, width: Callable[[], int],
                 every: float = 20.0):
        self.ref, self.step, self.status, self.terminal, self.width = ref, step, status, terminal, width
        self.every = 1.0 if terminal else every
        self.start, self.phase, self.latest = time.monotonic(), BuildPhase(), ""
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> BuildProgress:
        if not self.terminal:
            ui.say(f"building {self.ref} for step {self.step} (its progress every {self.every:.0f} s)")
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._ticker.join()

    def see(self, line: str) -> None:
        self.phase.see(line)
        if not self.QUIET.search(line):
            self.latest = line.strip()
        if self.terminal:
            self.show()

    def show(self) -> None:
        text = f"building {self.step} ({self.phase}, {time.monotonic() - self.start:.0f}s)" + (
            f": {self.latest}" if self.latest else "")
        if self.terminal:
            from rich.markup import escape

            self.status.update(escape(text[:max(20, self.width() - 8)]))
        else:
            ui.say(text[:200])

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.show()
