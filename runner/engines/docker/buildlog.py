"""What a build's log says: which layer and pip phase it is at, and a failed build in a few lines."""

from __future__ import annotations

import re
from pathlib import Path

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
    """Which layer a build is at (Dockerfile.pip's stages) and what pip is doing there, from the build's lines."""

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
            elif instruction.startswith("COPY --from=deps"):
                self.layer = "dependencies (copy)"
            elif instruction.startswith("RUN"):
                self.layer = instruction[4:40]
            return
        for prefix, phase in self.PIP:
            if text.startswith(prefix):
                self.pip = phase

    def __str__(self) -> str:
        return f"{self.layer} layer" + (f", pip {self.pip}" if self.pip else "")
