"""MNIST preprocessing: read the IDX files (gzip + numpy), verify md5s, normalise, write train/val/test splits.

    python mnist-preproc.py --output DIR [--source URL|DIR] [--seed N]

With the full set (60k train + 10k test) the 60k are split into train/val and the 10k are the test split. With only
the 10k test files (an offline site) those are split 8000/1000/1000. Without --source, or when DIR holds no IDX
files, the full set is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FILES = {  # official md5s
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MEAN, STD = 0.1307, 0.3081


class PreprocError(Exception):
    pass


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def read_idx(path: Path, magic: int) -> np.ndarray:
    data = gzip.open(path).read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise PreprocError(f"{path}: not an IDX file of the expected kind (magic {found:#010x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fetch(source: str | None, workdir: Path) -> Path:
    """A directory with the IDX files: the given one, or a download of the full set."""
    if source and not source.startswith(("http://", "https://")):
        d = Path(source)
        if any((d / f).is_file() for f in FILES):
            return d
        print(f"mnist-preproc: no MNIST files in {d}: downloading the full set", flush=True)
        source = None
    base = source or MIRROR
    for name in FILES:
        url = base.rstrip("/") + "/" + name
        print(f"mnist-preproc: downloading {url}", flush=True)
        try:
            urllib.request.urlretrieve(url, workdir / name)
        except OSError as exc:
            raise PreprocError(f"cannot download {url}: {exc} (offline? pass --source DIR with the IDX files)") from None
    return workdir


def load(d: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images, labels = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        return None
    for f in (images, labels):
        if md5(f) != FILES[f.name]:
            raise PreprocError(f"{f}: md5 {md5(f)} does not match the published {FILES[f.name]}")
    x, y = read_idx(images, 0x803), read_idx(labels, 0x801)
    if len(x) != len(y):
        raise PreprocError(f"{d}: {len(x)} images but {len(y)} labels")
    return x, y


def normalise(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--input", action="append", help="ignored (the prototype passed --input null)")
    p.add_argument("--source", help="URL prefix or directory holding the IDX .gz files")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.1)
    args = p.parse_args(argv)
    out = Path(args.output)
    try:
        with tempfile.TemporaryDirectory(prefix="mnist-") as tmp:
            d = fetch(args.source, Path(tmp))
            train, test = load(d, "train"), load(d, "t10k")
            if test is None:
                raise PreprocError(f"{d}: t10k-images/labels-idx*-ubyte.gz are missing")
        rng = np.random.default_rng(args.seed)
        if train is not None:
            x, y = train
            idx = rng.permutation(len(x))
            n_val = int(len(x) * args.val_fraction)
            splits = {"train": (x[idx[n_val:]], y[idx[n_val:]]), "val": (x[idx[:n_val]], y[idx[:n_val]]), "test": test}
            note = "full MNIST: 60k train split into train/val, 10k test"
        else:
            x, y = test
            idx = rng.permutation(len(x))
            n = len(x) // 10
            splits = {"train": (x[idx[2 * n:]], y[idx[2 * n:]]), "val": (x[idx[:n]], y[idx[:n]]),
                      "test": (x[idx[n:2 * n]], y[idx[n:2 * n]])}
            note = "only the 10k test set is available: split 80/10/10 into train/val/test"
        print(f"mnist-preproc: {note}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        counts = {}
        for name, (xs, ys) in splits.items():
            np.savez(out / f"{name}.npz", x=normalise(xs), y=ys.astype(np.int64))
            counts[name] = int(len(xs))
        meta = {"source": str(args.source or MIRROR), "note": note, "counts": counts, "mean": MEAN, "std": STD,
                "seed": args.seed}
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"mnist-preproc: wrote {counts} to {out}", flush=True)
    except PreprocError as exc:
        print(f"mnist-preproc: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
