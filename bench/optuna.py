"""Adaptive search against the grid, side by side in one run, on the surrogate use case (3 epochs a point):

  - a 12-point grid (hidden size 16, 32 or 64; learning rate 1e-4, 1e-3, 1e-2 or 1e-1) and 12 Optuna trials over the
    same space (hidden size a choice of the three, learning rate log-uniform in [1e-4, 1e-1], seed 0), both
    `parallel: 2` under --jobs 2: the best val_loss of each, and their wall times
  - a rerun of the Optuna sweep with nothing changed: how many trials run (0: its study is resumed)

Run after `make`: .venv/bin/python bench/optuna.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, REPO  # noqa: E402

WF = "use-cases/surrogate/sweep-workflow.yml"
GRID = """        grid:
          model.init_args.hidden_size: [16, 32, 64]
          model.init_args.learning_rate: [0.0001, 0.001, 0.01, 0.1]
"""
OPTUNA = """        optuna:
          trials: 12
          seed: 0
          space:
            model.init_args.hidden_size: {choice: [16, 32, 64]}
            model.init_args.learning_rate: {loguniform: [0.0001, 0.1]}
"""
SHIPPED = """        grid:
          model.init_args.hidden_size: [32, 128]
          model.init_args.learning_rate: [0.0005, 0.002]
"""


def configure(root: Path, name: str, sweep: str) -> str:
    text = (REPO / WF).read_text()
    for old, new in (("max-epochs: 10", "max-epochs: 3"), (SHIPPED, sweep),
                     ("location: ./data/surrogate/sweep\n", f"location: ./data/surrogate/{name}\n")):
        assert old in text, old
        text = text.replace(old, new)
    path = root / f"use-cases/surrogate/{name}.yml"
    path.write_text(text)
    return str(path.relative_to(root))


def itwin(root: Path, wf: str) -> tuple[float, str]:
    env = {**os.environ, "ITWIN_RUN_WHEELHOUSE": os.environ.get("ITWIN_RUN_WHEELHOUSE", "/opt/wheels")}
    start = time.perf_counter()
    res = subprocess.run([ITWIN, "--jobs", "2", "--until", "train", wf], cwd=root, capture_output=True, text=True,
                         env=env)
    if res.returncode:
        sys.exit(f"itwin-run failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - start, res.stderr


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="itwin-bench-optuna-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "use-cases" / "surrogate", root / "use-cases" / "surrogate")
        shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__",
                                                                                          "build"))
        root.chmod(0o755)
        grid, optuna = configure(root, "grid", GRID), configure(root, "optuna", OPTUNA)
        subprocess.run([ITWIN, "build", grid], cwd=root, check=True, capture_output=True)
        times, best = {}, {}
        for name, wf in (("grid", grid), ("optuna", optuna)):
            times[name], _ = itwin(root, wf)
            table = json.loads((root / f"data/surrogate/{name}/sweep.json").read_text())
            row = next(r for r in table["points"] if r["point"] == table["best"])
            best[name] = (row["val_loss"], row["params"], sum(r["val_loss"] is not None for r in table["points"]))
        _, err = itwin(root, optuna)
        again = [ln for ln in err.splitlines() if ln.startswith("run train.")]
        print("surrogate, 3 epochs a point, parallel: 2, --jobs 2 (the first includes simulating once):")
        for name in ("grid", "optuna"):
            loss, params, n = best[name]
            print(f"  {name:<7} {n} points  {times[name]:6.1f} s   best val_loss {loss:.5f}  {json.dumps(params)}")
        print(f"best val_loss optuna / grid = {best['optuna'][0] / best['grid'][0]:.3f}")
        print(f"rerun of the optuna sweep with nothing changed: {len(again)} trial(s) ran")


if __name__ == "__main__":
    main()
