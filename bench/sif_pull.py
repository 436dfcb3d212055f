"""SIFs through a registry, one run (issue: on the HPC node): the MNIST training workflow's images pushed with
`build --push --engine apptainer` (the Docker images and, as oras:// artifacts, their SIFs and source overlays) to a
registry on 127.0.0.1; then, on a "node" with an empty SIF cache and no Docker daemon, each step image made ready
from the pin file both ways, side by side:

  - converting: the pins as `build --push` with Docker writes them (images only): the dependency image pulled and
    converted into a SIF, the sources' wheels pulled and installed into an overlay;
  - pulling: the same pins with their SIFs: the files pulled, nothing converted.

Prints both times, their ratio (goal <= 0.2) and the conversions each way. Needs a Docker daemon (for the push),
apptainer and mksquashfs (tests: /tmp/applab/bin from ../shared/hpc/apptainer).
Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/sif_pull.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, mnist  # noqa: E402
from tests.services import registry  # noqa: E402

WORKFLOW = "use-cases/mnist/training-workflow.yml"


def ready(pins: dict, cache: Path) -> tuple[float, int, int]:
    """Seconds to make every pinned image ready in an empty SIF cache, with no Docker daemon; the files made by
    conversion and by pulling."""
    from runner.engines.apptainer import ApptainerBuilder
    from runner.images import BuildOptions, ImageSpec

    before = dict(os.environ)
    os.environ.update(ITWIN_RUN_SIF_CACHE=str(cache), DOCKER_HOST="unix:///nonexistent")
    try:
        builder = ApptainerBuilder()
        start = time.perf_counter()
        for step, pin in pins.items():
            builder.resolve(ImageSpec(kind="image", name=step, step=step, image=pin.image, pin=pin), BuildOptions())
        took = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(before)
    files = [p for p in cache.iterdir() if not p.name.startswith(".")]
    pulled = [p for p in files if "-sif_" in p.name or "-sqfs_" in p.name]
    return took, len(files) - len(pulled), len(pulled)


def main() -> None:
    from runner.images import read_pins

    with tempfile.TemporaryDirectory(prefix="itwin-bench-sif-pull-") as tmp:
        root = mnist(Path(tmp))
        site = {**os.environ, "ITWIN_RUN_SIF_CACHE": str(root / "site-sif")}
        (root / "registry").mkdir()
        with registry(root / "registry") as addr:
            start = time.perf_counter()
            subprocess.run([ITWIN, "build", "--engine", "apptainer", "--push", "--registry", f"{addr}/bench", WORKFLOW],
                           cwd=root, check=True, capture_output=True, env=site)
            pushed = time.perf_counter() - start
            path = root / WORKFLOW.replace(".yml", ".images.json")
            with_sifs = read_pins(path)
            images_only = {s: dataclasses.replace(p, sif=None, overlay=None) for s, p in with_sifs.items()}
            sizes = json.loads(path.read_text())["sifs"]
            convert, converted, _ = ready(images_only, root / "node-convert")
            pull, made, fetched = ready(with_sifs, root / "node-pull")
    print(f"{WORKFLOW}: {len(with_sifs)} step images ({', '.join(sorted(with_sifs))}); "
          f"built, converted and pushed on the Docker side in {pushed:.1f} s; artifacts: "
          f"{sum(1 + bool(p.get('overlay')) for p in sizes.values())}")
    print(f"  node, converting (images only):  {convert:7.1f} s   files converted or made: {converted}")
    print(f"  node, pulling the SIFs:           {pull:7.1f} s   files pulled: {fetched}, converted or made: {made}")
    print(f"pull / convert = {pull / convert:.2f}  (goal <= 0.2)")


if __name__ == "__main__":
    main()
