"""Edit-and-rerun figures with --engine apptainer for the MNIST training image (issue: layered step images), one run:

  - cold: `itwin-run build --engine apptainer` with an empty SIF cache: the dependency SIF is converted and the
    source overlay made (Docker's build cache warm, as after `make test`)
  - after a one-line edit of the itwinai source: the time until the step can start (goal <= 20 s), against the
    conversion of the whole image into one SIF, which is what the edit cost before (today's path, measured here)
  - the same edit on a node that takes its images from a registry (`build --push`, then `--images` pins): the time
    until a step can start there, against converting the whole pushed image (what the edit cost before)
  - the dependency SIF's conversion with other mksquashfs settings (lz4 is the engine's default): time, size and
    the start of a Python step from it (`apptainer exec SIF python -c pass`, median of 5)

Needs a Docker daemon, apptainer and mksquashfs (tests: /tmp/applab/bin from ../shared/hpc/apptainer).
Run: PATH=/tmp/applab/bin:$PATH .venv/bin/python bench/apptainer_rebuild.py [--skip-compression] [--skip-registry]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, mnist  # noqa: E402
from tests.services import registry  # noqa: E402

WORKFLOW = "use-cases/mnist/training-workflow.yml"
SETTINGS = [("lz4 (default)", "-comp lz4"), ("lz4, -processors 1", "-comp lz4 -processors 1"),
            ("zstd level 1", "-comp zstd -Xcompression-level 1"), ("zstd level 3", "-comp zstd -Xcompression-level 3"),
            ("gzip", "-comp gzip")]


def build(root: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([ITWIN, "build", "--engine", "apptainer", WORKFLOW], cwd=root, check=True,
                         capture_output=True, text=True, env=env).stdout
    return time.perf_counter() - start, dict(ln.split("\t") for ln in out.splitlines() if "\t" in ln)["ml-training"]


def convert(source: str, dest: Path, args: str, no_https: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(["apptainer", "build", "--force", "--mksquashfs-args", args, *(["--no-https"] if no_https else []),
                    str(dest), source], check=True, capture_output=True)
    return time.perf_counter() - start


def step_in(sif: Path, argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["apptainer", "--quiet", "exec", str(sif), *argv], check=True, capture_output=True)
    return time.perf_counter() - start


def exec_start(sif: Path) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(["apptainer", "--quiet", "exec", str(sif), "python", "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def registry_figures(root: Path, cli: Path) -> None:
    """A one-step workflow in the training image (its env file and sources) whose step only imports itwinai:
    pushed, then run from the pins with an empty SIF cache, edited, pushed and run again."""
    import json

    (root / "pinned.yml").write_text(
        "datasets:\n  out: {location: ./data/pinned}\nsteps:\n  - t:\n      output: out\n"
        "      command: python -c \"import itwinai.cli\"\n      allow_empty_output: true\n"
        "      env: {file: ./itwinai/env.yml, source: [./itwinai]}\n")
    (root / "registry").mkdir()
    node = {**os.environ, "ITWIN_RUN_SIF_CACHE": str(root / "node-sif")}
    with registry(root / "registry") as addr:
        def push() -> dict:
            subprocess.run([ITWIN, "build", "--push", "--registry", f"{addr}/bench", "pinned.yml"], cwd=root,
                           check=True, capture_output=True)
            return json.loads((root / "pinned.images.json").read_text())

        def run() -> float:
            start = time.perf_counter()
            subprocess.run([ITWIN, "--engine", "apptainer", "--images", "pinned.images.json", "--force", "pinned.yml"],
                           cwd=root, check=True, capture_output=True, env=node)
            return time.perf_counter() - start

        push()
        cold = run()
        cli.write_text(cli.read_text() + f"# another one-line edit {time.time_ns()}\n")
        pins = push()
        warm = run()
        whole = convert(f"docker://{pins['images']['t']}", root / "whole-pulled.sif", "-comp lz4", no_https=True)
        whole += step_in(root / "whole-pulled.sif", ["python", "-c", "import itwinai.cli"])
        print(f"from a registry (--images pins): cold {cold:.1f} s (dependency SIF pulled and converted); after a "
              f"one-line source edit and a new push: {warm:.1f} s to run the step (goal <= 20 s); the whole pushed "
              f"image converted and the step run from it instead: {whole:.1f} s (ratio {warm / whole:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-compression", action="store_true")
    ap.add_argument("--skip-registry", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-apptainer-rebuild-") as tmp:
        root = Path(tmp)
        mnist(root)
        cache = root / "sif"
        env = {**os.environ, "ITWIN_RUN_SIF_CACHE": str(cache)}
        cold, image = build(root, env)
        deps = Path(image.split("::")[0])
        sifs = sorted(p.name for p in cache.glob("*.sif"))
        cli = root / "itwinai" / "src" / "itwinai" / "cli.py"
        cli.write_text(cli.read_text() + f"# a one-line edit {time.time_ns()}\n")  # a new image every run
        warm, image = build(root, env)
        overlay = Path(image.split("::")[1])
        assert sorted(p.name for p in cache.glob("*.sif")) == sifs, "a SIF was converted again"
        assert image.startswith(f"{deps}::"), image
        # the way before overlays, for the same kind of edit: the Docker image rebuilt, then converted whole
        cli.write_text(cli.read_text() + f"# a second one-line edit {time.time_ns()}\n")
        start = time.perf_counter()
        docker_ref = subprocess.run([ITWIN, "build", WORKFLOW], cwd=root, check=True, capture_output=True,
                                    text=True).stdout
        rebuilt = time.perf_counter() - start
        docker_ref = dict(ln.split("\t") for ln in docker_ref.splitlines() if "\t" in ln)["ml-training"]
        whole = rebuilt + convert(f"docker-daemon://{docker_ref}", root / "whole.sif", "-comp lz4")
        print(f"cold (dependency SIF + overlay): {cold:.1f} s, dependency SIF {deps.stat().st_size / 1e6:.0f} MB")
        print(f"after a one-line source edit: {warm:.1f} s until the step can start (goal <= 20 s); new overlay "
              f"{overlay.stat().st_size / 1e3:.0f} kB; the Docker image rebuilt ({rebuilt:.1f} s) and converted into "
              f"one SIF instead: {whole:.1f} s (ratio {warm / whole:.2f})")
        if not args.skip_registry:
            registry_figures(root, cli)
        if args.skip_compression:
            return
        deps_ref = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                                   "label=org.itwin-run.managed=1"], check=True, capture_output=True, text=True)
        # the dependency image is the training image's spec without sources: find it by the SIF's tag
        tag = deps.stem.split("-", 1)[1]
        deps_image = next(r for r in deps_ref.stdout.split() if r.endswith(f":{tag}"))
        print(f"dependency SIF conversion of {deps_image} ({os.cpu_count()} cores):")
        for name, setting in SETTINGS:
            sif = root / f"deps-{len(name)}.sif"
            t = convert(f"docker-daemon://{deps_image}", sif, setting)
            print(f"  {name:20s} {t:6.1f} s  {sif.stat().st_size / 1e6:5.0f} MB  python start {exec_start(sif):.3f} s")
            sif.unlink()


if __name__ == "__main__":
    main()
