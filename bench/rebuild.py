"""Edit-and-rebuild figures for the MNIST training image (issue: layered step images), one run:

  - cold: the training image after a change of its env file (the dependency install runs; the base is warm)
  - rebuild after a one-line edit of the itwinai source: time / cold time (goal <= 0.1), and the bytes of the
    layers the new image does not share with the previous one (goal <= 50 MB)
  - the two images share every layer but the last ones (the source layer), by diff id

The cold build uses a fresh requirement spelling (pyyaml>=6,!=0.0.NONCE) so that no build cache serves it.
Run: .venv/bin/python bench/rebuild.py
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ITWIN, mnist  # noqa: E402

WORKFLOW = "use-cases/mnist/training-workflow.yml"


def build(root: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([ITWIN, "build", WORKFLOW], cwd=root, check=True, capture_output=True, text=True).stdout
    ref = dict(line.split("\t") for line in out.splitlines() if "\t" in line)["ml-training"]
    return time.perf_counter() - start, ref


def layers(client: docker.DockerClient, ref: str) -> list[tuple[str, int]]:
    """(diff id, size in bytes) of each layer of an image, base first: the size the daemon's layer store keeps
    for that layer's chain id (overlay2's layerdb), so each size belongs to the digest it is printed with."""
    info = client.info()
    store = Path(info["DockerRootDir"], "image", info["Driver"], "layerdb", "sha256")
    if not store.is_dir():
        sys.exit(f"bench/rebuild.py: no layer store at {store} (the {info['Driver']} driver): layer sizes unknown")
    out, chain = [], ""
    for diff in client.images.get(ref).attrs["RootFS"]["Layers"]:
        chain = diff if not chain else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
        entry = store / chain.split(":", 1)[1]
        assert (entry / "diff").read_text() == diff, f"{entry} holds another layer"
        out.append((diff, int((entry / "size").read_text())))
    return out


def main() -> None:
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="itwin-bench-rebuild-") as tmp:
        root = Path(tmp)
        mnist(root)
        env = root / "itwinai" / "env.yml"
        env.write_text(env.read_text().replace("- pyyaml>=6", f"- pyyaml>=6,!=0.0.{time.time_ns()}"))
        cold, first = build(root)
        cli = root / "itwinai" / "src" / "itwinai" / "cli.py"
        cli.write_text(cli.read_text() + f"# a one-line edit {time.time_ns()}\n")  # a new image every run
        warm, second = build(root)
        before, after = layers(client, first), layers(client, second)
        shared = {d for d, _ in before}
        new = [(d, s) for d, s in after if d not in shared]
        common = sum(1 for (a, _), (b, _) in zip(before, after, strict=False) if a == b)
        for ref in {first, second}:
            client.images.remove(ref, force=True)
    print(f"cold (dependencies installed): {cold:.1f} s; after a one-line source edit: {warm:.1f} s; "
          f"ratio {warm / cold:.3f}  (goal <= 0.1)")
    print(f"new layers after the edit: {len(new)}, {sum(s for _, s in new) / 1e6:.1f} MB  (goal <= 50 MB)")
    print(f"layers: {common} of {len(after)} shared with the image before the edit (by diff id) "
          f"(all but the last {len(after) - common})")


if __name__ == "__main__":
    main()
