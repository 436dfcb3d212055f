"""Training throughput inside the container / on the host (issue: itwinai + MNIST), one run, side by side.

Same data (the offline 10k MNIST split), same config and epochs; host, Docker and (with apptainer on PATH, or
--apptainer) Apptainer runs alternate. Then DDP on the host: `devices: 2, strategy: ddp` on CPU (Lightning starts
the second process) against the one-process runs.
Run: .venv/bin/python bench/train.py [--epochs N] [--repeat N] [--apptainer]
     (goal: container / host >= 0.97 for each engine; DDP: a figure). Apptainer: `PATH=/tmp/applab/bin:$PATH`
     after the tests' apptainer_env (../shared/hpc/apptainer/setup-apptainer.sh) has set it up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKFLOW = """
datasets:
  preproc-images: {location: ./data/preproc-images}
  ml-logs: {location: ./data/ml-logs-container}
steps:
  - ml-training:
      input: preproc-images
      output: ml-logs
      command: itwinai train
      env: {file: ./itwinai/env.yml, source: ./itwinai}
      params: {config: ./use-cases/mnist/mnist-ai.yml, max-epochs: EPOCHS}
"""


SAMPLES: set[int] = set()  # what each run says it trained (all ranks)


def rate(output: str) -> float:
    m = re.search(r"itwinai: trained (\d+) samples in [\d.]+s \((\d+) samples/s\)", output)
    if not m:
        raise SystemExit(f"no throughput line in:\n{output[-2000:]}")
    SAMPLES.add(int(m.group(1)))
    return float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--apptainer", action="store_true", help="also under Apptainer (default: when on PATH)")
    args = ap.parse_args()
    engines = ["docker", *(["apptainer"] if args.apptainer or shutil.which("apptainer") else [])]
    root = Path(tempfile.mkdtemp(prefix="itwin-bench-train-"))
    root.chmod(0o755)  # steps run unprivileged under root: the project must be readable (mkdtemp makes it private)
    try:
        shutil.copytree(REPO / "use-cases" / "mnist", root / "use-cases" / "mnist")
        shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        (root / "workflow.yml").write_text(WORKFLOW.replace("EPOCHS", str(args.epochs)))
        subprocess.run([sys.executable, "use-cases/mnist/mnist-preproc.py", "--source", str(REPO.parent / "shared/data/mnist"),
                        "--output", "data/preproc-images"], cwd=root, check=True, capture_output=True)
        for engine in engines:  # the image (and its SIF) before any timing
            subprocess.run([str(BIN / "itwin-run"), "build", "--engine", engine, "workflow.yml"], cwd=root, check=True)
        host: list[float] = []
        container: dict[str, list[float]] = {e: [] for e in engines}
        for i in range(args.repeat):
            out = subprocess.run([str(BIN / "itwinai"), "train", "--config", "use-cases/mnist/mnist-ai.yml", "--input",
                                  "data/preproc-images", "--output", f"data/ml-logs-host-{i}", "--max-epochs",
                                  str(args.epochs)], cwd=root, capture_output=True, text=True, check=True)
            host.append(rate(out.stdout))
            for engine in engines:
                out = subprocess.run([str(BIN / "itwin-run"), "--engine", engine, "--force", "workflow.yml"], cwd=root,
                                     capture_output=True, text=True, check=True)
                container[engine].append(rate(out.stdout))
        pl = yaml.safe_load((root / "use-cases/mnist/pl-training.yml").read_text())
        pl["trainer"].update(devices=2, strategy="ddp", accelerator="cpu")
        (root / "pl-ddp.yml").write_text(yaml.safe_dump(pl))
        ddp = []
        for i in range(args.repeat):
            out = subprocess.run([str(BIN / "itwinai"), "train", "--config", "use-cases/mnist/mnist-ai.yml",
                                  "--train-config", "pl-ddp.yml", "--input", "data/preproc-images", "--output",
                                  f"data/ml-logs-ddp-{i}", "--max-epochs", str(args.epochs)], cwd=root,
                                 capture_output=True, text=True, check=True)
            ddp.append(rate(out.stdout))
        h, d = statistics.median(host), statistics.median(ddp)
        train = json.loads((root / "data/preproc-images/meta.json").read_text())["counts"]["train"]
        print(f"LitMNIST, {args.epochs} epochs of the {train} training samples; each run trained "
              f"{' or '.join(map(str, sorted(SAMPLES)))} samples in all; {args.repeat} runs each (samples/s):")
        print(f"  host       {h:.0f}   runs: {' '.join(f'{x:.0f}' for x in host)}")
        for engine, runs in container.items():
            print(f"  {engine:<10} {statistics.median(runs):.0f}   runs: {' '.join(f'{x:.0f}' for x in runs)}")
        print(f"  host DDP 2 processes (CPU, {os.cpu_count()} cores)  {d:.0f}   runs: {' '.join(f'{x:.0f}' for x in ddp)}")
        for engine, runs in container.items():
            print(f"{engine} container / host = {statistics.median(runs) / h:.3f}  (goal >= 0.97); best run against "
                  f"best run: {max(runs) / max(host):.3f}")
        print(f"DDP 2 processes / 1 process = {d / h:.3f}  (a figure, not a goal)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
