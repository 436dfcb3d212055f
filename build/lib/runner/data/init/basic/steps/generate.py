"""Step `generate`: writes COUNT numbers to OUTPUT/numbers.txt (`--output OUT --count N`, as itwin-run calls it)."""

import argparse
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--output", required=True)
ap.add_argument("--count", type=int, default=10)
args = ap.parse_args()
Path(args.output, "numbers.txt").write_text("".join(f"{i}\n" for i in range(1, args.count + 1)))
print(f"wrote {args.count} numbers to {args.output}")
