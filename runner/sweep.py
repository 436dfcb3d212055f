"""Sweeps: one step run for every point of a parameter grid, each point in its own folder of the step's output
dataset, and the best point (by a metric each point writes to `metrics.json`) linked as `best`."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Scalar = Union[bool, int, float, str]
MAX_POINTS = 100  # more points need --max-points
METRICS = "metrics.json"  # what each point writes into its folder
BEST = "best"  # the link to the winning point, in the output dataset
RECORD = "sweep.json"  # the points, their metric and the winner, beside them

# What a point's container is told (itwinai puts all points of a sweep under one MLflow parent run).
ENV_SWEEP, ENV_POINT, ENV_BEST = "ITWIN_RUN_SWEEP", "ITWIN_RUN_POINT", "ITWIN_RUN_BEST"


class Best(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    mode: Literal["min", "max"] = "min"


Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Bounds = tuple[float, float]


class Dim(BaseModel):
    """One param of an adaptive search's space: exactly one of these."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    loguniform: Bounds | None = None
    uniform: Bounds | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    choice: Annotated[list[Scalar], Field(min_length=1)] | None = None


class Optuna(BaseModel):
    """`sweep.optuna`: Optuna's ask-and-tell over `space`, `trials` points, `parallel` at a time (a wave)."""

    model_config = ConfigDict(extra="forbid")
    trials: Annotated[int, Field(ge=1, le=10000)]
    seed: int | None = None
    space: Annotated[dict[Key, Dim], Field(min_length=1)]


class Sweep(BaseModel):
    """`sweep:` of a step: the grid (param name -> its values; the cartesian product) or an adaptive search
    (`optuna`), which point goes on, and how many points run at once."""

    model_config = ConfigDict(extra="forbid")
    grid: dict[Key, Annotated[list[Scalar], Field(min_length=1)]] | None = None
    optuna: Optuna | None = None
    best: Best
    parallel: Annotated[int, Field(ge=1, le=10000)] | None = None

    @property
    def keys(self) -> list[str]:
        """The params it sets on its points."""
        return list(self.grid or {}) + list(self.optuna.space if self.optuna else {})

    @property
    def wave(self) -> int:
        """(optuna) how many trials are asked at once: `parallel`, else one at a time."""
        return self.parallel or 1


@dataclass(frozen=True)
class Point:
    slug: str  # the point's folder and the tail of its step name: hidden-16_lr-0.003
    values: dict[str, Any]


def points(sweep: Sweep) -> list[Point]:
    """A grid's points: every combination of its values, in the file's order, each named by its values. An adaptive
    search's: its trials, `trial-K`, their values asked when each is about to run (runner.study)."""
    if sweep.optuna:
        return [Point(slug=f"trial-{k}", values={}) for k in range(sweep.optuna.trials)]
    grid = sweep.grid or {}
    keys = list(grid)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    names = short if len(set(short)) == len(short) else keys  # the last part of a dotted name, unless two clash
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        slug = "_".join(f"{n}-{_word(v)}" for n, v in zip(names, combo, strict=True))
        out.append(Point(slug=slug, values=dict(zip(keys, combo, strict=True))))
    return out


def _word(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def check(sweep: Sweep, params: dict[str, Any], max_points: int) -> list[tuple[tuple, str]]:
    """(where under `sweep`, what is wrong): the checks pydantic does not make."""
    found: list[tuple[tuple, str]] = []
    if (sweep.grid is None) == (sweep.optuna is None):
        return [((), "give one of grid (every combination) and optuna (an adaptive search)")]
    where = ("grid",) if sweep.grid else ("optuna", "space")
    for key in sweep.keys:
        if key in params:
            found.append(((*where, key), f"{key!r} is also in params: give it in one place"))
    for key, dim in (sweep.optuna.space if sweep.optuna else {}).items():
        given = [v for v in (dim.loguniform, dim.uniform, dim.int_, dim.choice) if v is not None]
        if len(given) != 1:
            found.append(((*where, key), "give one of loguniform: [LOW, HIGH], uniform: [LOW, HIGH], int: [LOW, HIGH]"
                                         " and choice: [VALUE, ...]"))
        elif dim.choice is None and not given[0][0] < given[0][1]:
            found.append(((*where, key), f"[{given[0][0]}, {given[0][1]}]: LOW must be below HIGH"))
        elif dim.loguniform and dim.loguniform[0] <= 0:
            found.append(((*where, key, "loguniform"), "LOW must be above 0 (a log scale)"))
    pts = points(sweep)
    total = len(pts)
    if total > max_points:
        found.append(((where[0],), f"{total} points, more than {max_points} (--max-points N allows more)"))
    slugs = [p.slug for p in pts]
    if len(set(slugs)) != len(slugs):
        found.append((("grid",), "two points would share a folder name: make the values differ in letters or digits"))
    return found


# ---------------------------------------------------------------- the winner


def metric_of(folder: Path, metric: str) -> float | None:
    """The point's metric from its metrics.json, when it is a finite number."""
    try:
        value = json.loads((folder / METRICS).read_text()).get(metric)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def choose(output: Path, pts: list[Point], finished: set[str], best: Best) -> dict[str, Any]:
    """Pick the winner among the finished points and link it as `OUTPUT/best`; write OUTPUT/sweep.json. Returns
    that record (its `best` is None when no finished point has the metric)."""
    rows = []
    for p in pts:
        value = metric_of(output / p.slug, best.metric) if p.slug in finished else None
        rows.append({"point": p.slug, "params": p.values, "finished": p.slug in finished, best.metric: value})
    scored = [r for r in rows if r[best.metric] is not None]
    sign = 1 if best.mode == "min" else -1
    winner = min(scored, key=lambda r: sign * r[best.metric])["point"] if scored else None
    link = output / BEST
    if winner is None:
        if link.is_symlink():
            link.unlink()
    elif not (link.is_symlink() and os.readlink(link) == winner):
        tmp = output / f".{BEST}.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(winner)  # relative: the same inside the container, where the dataset has the same path
        tmp.replace(link)
    record = {"metric": best.metric, "mode": best.mode, "best": winner, "points": rows}
    text = json.dumps(record, indent=2) + "\n"
    path = output / RECORD
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return record


def settle(output: Path, pts: list[Point], best: Best, states: dict[str, str | None]) -> tuple[str, dict[str, Any], list[str]]:
    """A sweep's own step, once its points have ended: (its status, its record's fields, what to say). `states`: each
    point's status in this run (slug -> done, up to date, failed, ...)."""
    finished = {slug for slug, st in states.items() if st in ("done", "up to date")}
    before = os.readlink(output / BEST) if (output / BEST).is_symlink() else None
    record = choose(output, pts, finished, best)
    winner, metric = record["best"], best.metric
    info = {"best": winner, "metric": metric, "mode": best.mode,
            "points": [{**row, "status": states.get(row["point"])} for row in record["points"]]}
    lines = [f"{row['point']}: {states.get(row['point'])}, {metric} {row[metric]}" for row in record["points"]]
    lacking = [row["point"] for row in record["points"] if row["finished"] and row[metric] is None]
    if lacking:
        lines.append(f"no {metric} in {METRICS} of point(s) {', '.join(lacking)}: not chosen")
    if winner is None:
        info["reason"] = f"no point wrote {metric} to its {METRICS}"
        return "failed", info, lines
    value = next(r[metric] for r in record["points"] if r["point"] == winner)
    lines.append(f"best: {winner} ({metric} {value:g}, of {len(finished)} point(s))")
    same = before == winner and all(st == "up to date" for st in states.values())
    return "up to date" if same else "done", info, lines
