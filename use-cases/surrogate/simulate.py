"""Simulation step: sample damped oscillators and write their exact responses (numpy only, offline).

    python simulate.py --output DIR [--samples N] [--seed S] [--splits train,val,test] [--physics PACKAGE_DIR]

Each split is an npz with x (n, 4: omega, zeta, x0, v0) and y (n, 32: displacement at 32 times in [0, 4] s).
Training uses train/val/test; the inference workflow simulates a held-out set (another seed) as its test split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PACKAGE = Path(__file__).resolve().parent / "oscillator"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True)
    ap.add_argument("--input", help="unused: the simulation reads nothing")
    ap.add_argument("--samples", type=int, default=10000, help="in all, split 80/10/10 (one split: all of them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", default="train,val,test")
    ap.add_argument("--physics", default=str(PACKAGE), help="the oscillator package (its physics module is used)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.physics, "src")))
    from oscillator.physics import PARAMS, TIMES, sample  # the package's physics, not a copy

    splits = [s for s in args.splits.split(",") if s]
    if args.samples < 10 * len(splits):
        print(f"simulate: error: --samples {args.samples} is too few for {len(splits)} splits", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if len(splits) == 3:
        sizes = [int(args.samples * 0.8), int(args.samples * 0.1)]
        sizes.append(args.samples - sum(sizes))
    elif len(splits) == 1:
        sizes = [args.samples]
    else:
        print("simulate: error: --splits takes one split or three (train,val,test)", file=sys.stderr)
        return 2
    counts = {}
    for name, n in zip(splits, sizes, strict=True):
        x, y = sample(n, rng)
        np.savez(out / f"{name}.npz", x=x, y=y)
        counts[name] = n
    (out / "meta.json").write_text(json.dumps({"params": PARAMS, "times": TIMES.tolist(), "counts": counts,
                                               "seed": args.seed}, indent=2) + "\n")
    print(f"simulate: {counts} oscillators (seed {args.seed}) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
