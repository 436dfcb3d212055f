"""Step `make-data`: writes train/val/test splits of COUNT 28x28 images in ten classes to OUTPUT/*.npz (x, y).

Class k is a bright band at rows 2k..2k+4 under noise: small enough to train in seconds on a CPU, and a model that
learns it is visibly better than chance. Replace this with your own data: the training step reads OUTPUT/{split}.npz.
"""

import argparse
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--output", required=True)
ap.add_argument("--count", type=int, default=800)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

rng = np.random.default_rng(args.seed)
y = rng.integers(0, 10, size=args.count)
x = rng.normal(0.0, 0.5, size=(args.count, 28, 28)).astype(np.float32)
for i, k in enumerate(y):
    x[i, 2 * k + 2 : 2 * k + 6, 4:24] += 2.0
n_train, n_val = int(args.count * 0.7), int(args.count * 0.15)
splits = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, None)}
for name, part in splits.items():
    np.savez_compressed(Path(args.output, f"{name}.npz"), x=x[part], y=y[part])
    print(f"{name}: {len(y[part])} images")
