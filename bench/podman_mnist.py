"""MNIST with Podman against Docker, side by side in one run (Podman as a non-root user made here as the tests make
theirs: useradd, the wheel in ~/venv, rootless Podman on overlay, the kernel's or with --fuse fuse-overlayfs, the base
loaded from Docker's; Docker as root on a copy of the same project):

  - a one-line edit of the itwinai source (the training step's image): rebuild time and the bytes of the layers the
    new image does not share with the one before, Podman against Docker (alternating rounds, medians)
  - the training and inference workflows end to end with each engine: checksums of the preprocessed data and of
    the predictions, and the accuracy

Run as root after `make`: .venv/bin/python bench/podman_mnist.py [--rounds N] [--fuse]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import docker  # noqa: E402

from bench.common import ITWIN, REPO, mnist  # noqa: E402
from bench.rebuild import layers  # noqa: E402
from tests.services import User, make_user, podman_base, rootless_podman  # noqa: E402

TRAIN, INFER = "use-cases/mnist/training-workflow.yml", "use-cases/mnist/inference-workflow.yml"
WHEELS = {"ITWIN_RUN_WHEELHOUSE": "/opt/wheels"}  # the CPU torch wheel, for both engines' builds


def project(root: Path) -> Path:
    mnist(root)
    raw = root / "data" / "mnist" / "raw"
    raw.mkdir(parents=True)
    for f in (REPO.parent / "shared" / "data" / "mnist").glob("*.gz"):
        shutil.copy(f, raw)
    return root


def training_ref(out: str) -> str:
    return dict(line.split("\t") for line in out.splitlines() if "\t" in line)["ml-training"]


def edit(root: Path) -> None:
    cli = root / "itwinai" / "src" / "itwinai" / "cli.py"
    cli.write_text(cli.read_text() + f"# a one-line edit {time.time_ns()}\n")


def podman_layers(user: User, ref: str) -> list[tuple[str, int]]:
    """(diff id, size) of each layer of a Podman image, from containers/storage's own layer records."""
    diffs = json.loads(user.run(["podman", "image", "inspect", ref]).stdout)[0]["RootFS"]["Layers"]
    store = json.loads((user.home / ".local/share/containers/storage/overlay-layers/layers.json").read_text())
    size = {layer.get("diff-digest"): int(layer.get("diff-size", 0)) for layer in store}
    return [(d, size.get(d, 0)) for d in diffs]


def new_bytes(before: list[tuple[str, int]], after: list[tuple[str, int]]) -> int:
    shared = {d for d, _ in before}
    return sum(s for d, s in after if d not in shared)


def outputs(root: Path) -> dict[str, str]:
    """sha256 of the preprocessed data and of the predictions; the accuracy."""
    data = root / "data" / "mnist"
    out = {}
    for folder in ("preproc-images", "preproc-images-inference"):
        h = hashlib.sha256()
        for f in sorted((data / folder).rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(data)).encode() + f.read_bytes())
        out[folder] = h.hexdigest()[:16]
    out["predictions.csv"] = hashlib.sha256((data / "ml-predictions" / "predictions.csv").read_bytes()).hexdigest()[:16]
    out["accuracy"] = f"{json.loads((data / 'ml-predictions' / 'summary.json').read_text())['accuracy']:.4f}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fuse", action="store_true", help="the user's Podman on fuse-overlayfs, not the kernel's overlay")
    args = ap.parse_args()
    dist = Path("/tmp/itwin-bench-wheel")
    shutil.rmtree(dist, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w",
                    str(dist)], check=True, capture_output=True)
    user = make_user("itwinbench", next(dist.glob("*.whl")))
    rootless_podman(user, fuse=args.fuse)
    print("podman storage: overlay " + ("through fuse-overlayfs" if args.fuse else "(the kernel's, rootless)"))
    podman_base(user, ITWIN)
    pod = user.home / "mnist"
    shutil.rmtree(pod, ignore_errors=True)
    project(pod)
    subprocess.run(["chown", "-R", f"{user.name}:", str(pod)], check=True)
    dock = Path("/tmp/itwin-bench-podman-mnist")
    shutil.rmtree(dock, ignore_errors=True)
    project(dock)
    dock.chmod(0o755)
    client = docker.from_env()

    def podman_build() -> tuple[float, str]:
        start = time.perf_counter()
        res = user.itwin("build", "--engine", "podman", TRAIN, cwd=pod, env=WHEELS, timeout=3600)
        assert res.returncode == 0, res.stderr[-3000:]
        return time.perf_counter() - start, training_ref(res.stdout)

    def docker_build() -> tuple[float, str]:
        start = time.perf_counter()
        res = subprocess.run([ITWIN, "build", TRAIN], cwd=dock, env={**os.environ, **WHEELS},
                             capture_output=True, text=True, timeout=3600)
        assert res.returncode == 0, res.stderr[-3000:]
        return time.perf_counter() - start, training_ref(res.stdout)

    cold_p, ref_p = podman_build()
    cold_d, ref_d = docker_build()
    print(f"first builds: podman {cold_p:.1f} s, docker {cold_d:.1f} s (docker's dependency layers may be cached)")
    times: dict[str, list[float]] = {"podman": [], "docker": []}
    sizes: dict[str, list[int]] = {"podman": [], "docker": []}
    for _ in range(args.rounds):
        edit(pod)
        t, new = podman_build()
        times["podman"].append(t)
        sizes["podman"].append(new_bytes(podman_layers(user, ref_p), podman_layers(user, new)))
        ref_p = new
        edit(dock)
        t, new = docker_build()
        times["docker"].append(t)
        sizes["docker"].append(new_bytes(layers(client, ref_d), layers(client, new)))
        ref_d = new
    tp, td = statistics.median(times["podman"]), statistics.median(times["docker"])
    print(f"rebuild after a one-line source edit ({args.rounds} rounds, medians): podman {tp:.1f} s, "
          f"docker {td:.1f} s, podman / docker {tp / td:.2f}")
    print(f"new bytes after the edit: podman {statistics.median(sizes['podman']) / 1e6:.2f} MB, "
          f"docker {statistics.median(sizes['docker']) / 1e6:.2f} MB")

    for wf in (TRAIN, INFER):
        res = user.itwin("--engine", "podman", wf, cwd=pod, env=WHEELS, timeout=3600)
        assert res.returncode == 0, res.stderr[-3000:]
        res = subprocess.run([ITWIN, wf], cwd=dock, capture_output=True, text=True, timeout=3600)
        assert res.returncode == 0, res.stderr[-3000:]
    got_p, got_d = outputs(pod), outputs(dock)
    for key in got_p:
        print(f"{key:<26} podman {got_p[key]:<18} docker {got_d[key]:<18} {'same' if got_p[key] == got_d[key] else 'DIFFERENT'}")
    owners = {p.stat().st_uid for p in (pod / "data").rglob("*")}
    print(f"podman's output files owned by: {sorted(owners)} (the user is {user.run(['id', '-u']).stdout.strip()})")
    shutil.rmtree(dock, ignore_errors=True)


if __name__ == "__main__":
    main()
