"""A step's resources, as written and resolved: sizes and durations in the forms Docker, Apptainer and SLURM read."""

from __future__ import annotations

from dataclasses import dataclass

MEMORY = r"^\d+(\.\d+)?([KMGTkmgt][Bb]?)?$"
DURATION = r"^(\d+(\.\d+)?[smhd]|\d+(:\d{1,2}){1,2})$"
PATTERN_WORDS = {MEMORY: "a size such as 512M, 2G or 1.5G", DURATION: "a duration such as 90s, 30m, 2h or 01:30:00"}
# SLURM options become #SBATCH lines of a batch script that runs on the host: each has the shape sbatch documents
# (the SLURM executor checks its command-line defaults against the same patterns).
PARTITION = r"^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$"
SLURM_TIME = r"^(\d+(-\d{1,2}(:\d{1,2}){0,2})?|\d+(:\d{1,2}){1,2}|UNLIMITED|INFINITE)$"
SBATCH_FLAG = r"^--[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:/@%+=-]+)?$"


# What OpenMP, BLAS and PyTorch size their thread pools by: a step that shares the CPUs is told its share, as
# Snakemake tells a rule its `threads` (more threads than CPUs only wait for each other).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def sbatch_flag(x: str) -> str:
    """One `--flag[=value]` token of sbatch's, but --wrap (it replaces the batch script)."""
    if x == "--wrap" or x.startswith("--wrap="):
        raise ValueError("--wrap would replace the step's batch script")
    return x


@dataclass(frozen=True)
class Limits:
    """A step's resources, resolved: `memory` and `time` keep the text people wrote (for messages)."""

    cpus: float | None = None
    memory: str | None = None
    time: str | None = None

    @property
    def memory_bytes(self) -> int | None:
        return memory_bytes(self.memory) if self.memory else None

    @property
    def seconds(self) -> float | None:
        return duration_seconds(self.time) if self.time else None

    def __bool__(self) -> bool:
        return bool(self.cpus or self.memory or self.time)


def memory_bytes(text: str) -> int:
    """`512M`, `2G`, `1.5GB`, `1024` (bytes): binary units, as Docker, Apptainer and SLURM read them."""
    text = text.upper().removesuffix("B")
    unit = text[-1] if text[-1].isalpha() else ""
    number = float(text[:-1] if unit else text)
    return int(number * 1024 ** ("KMGT".index(unit) + 1 if unit else 0))


def duration_seconds(text: str) -> float:
    """`30m`, `2h`, `90s`, `1d`, or `[HH:]MM:SS` (SLURM's and `time`'s way)."""
    if ":" in text:
        total = 0.0
        for part in text.split(":"):
            total = total * 60 + int(part)
        return total
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
