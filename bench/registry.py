"""Prebuilt-image figures, one run (issue: registry push/pull): the toy workflow from a cold local cache (every
step image pulled from a registry on 127.0.0.1) / from a warm one, and the sizes of the base, preprocessing and
training images with the bytes the training image shares with the others.

Run: .venv/bin/python bench/registry.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.services import registry  # noqa: E402

ITWIN = str(Path(sys.executable).parent / "itwin-run")


def run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([ITWIN, *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-reg-") as tmp:
        with registry(Path(tmp)) as addr:
            toy = Path(tmp, "toy")
            shutil.copytree(REPO / "tests" / "toy", toy, ignore=shutil.ignore_patterns("data", ".itwin-run"))
            run(["build", "workflow.yml", "--push", "--registry", f"{addr}/bench"], toy)
            lock = json.loads((toy / "workflow.images.json").read_text())["images"]
            refs = sorted(set(lock.values()))
            warm, cold = [], []
            for _ in range(args.repeat):
                warm.append(run(["--force", "--images", "workflow.images.json", "workflow.yml"], toy))
                for image_id in {client.images.get(ref).id for ref in refs}:
                    client.images.remove(image_id, force=True)  # every tag: the local build too
                cold.append(run(["--force", "--images", "workflow.images.json", "workflow.yml"], toy))
    w, c = statistics.median(warm), statistics.median(cold)
    print(f"toy workflow (3 steps, 3 images), median of {args.repeat} (seconds):")
    print(f"  warm cache  {w:.2f}   runs: {' '.join(f'{x:.2f}' for x in warm)}")
    print(f"  cold cache  {c:.2f}   runs: {' '.join(f'{x:.2f}' for x in cold)}")
    print(f"cold / warm = {c / w:.2f}")

    out = subprocess.run([ITWIN, "build", "use-cases/mnist/training-workflow.yml"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    images = dict(line.split("\t") for line in out.splitlines())
    base = client.images.get("itwin-run/base:latest")
    layers = {name: client.images.get(ref).attrs["RootFS"]["Layers"] for name, ref in
              [("base", "itwin-run/base:latest"), ("preprocessing", images["preprocessing"]),
               ("training", images["ml-training"])]}
    sizes = {"base": base.attrs["Size"], "preprocessing": client.images.get(images["preprocessing"]).attrs["Size"],
             "training": client.images.get(images["ml-training"]).attrs["Size"]}
    shared = [layer for layer in layers["training"] if layer in layers["preprocessing"]]
    of_base = [layer for layer in shared if layer in layers["base"]]
    starts = layers["training"][:len(layers["base"])] == layers["base"]
    print("image sizes (bytes): " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    print(f"training shares {len(shared)} layers with preprocessing, {len(of_base)} of them of the base image "
          f"({len(layers['base'])} layers, {sizes['base']:,} bytes; training starts with all of them: {starts}); "
          f"training's layers beyond the base: {sizes['training'] - sizes['base']:,} bytes")


if __name__ == "__main__":
    main()
