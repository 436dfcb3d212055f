"""Step `stats`: reads INPUT/numbers.txt and writes OUTPUT/summary.txt (`--input IN --output OUT`)."""

import argparse
import statistics
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", required=True)
args = ap.parse_args()
numbers = [int(x) for x in Path(args.input, "numbers.txt").read_text().split()]
summary = f"count={len(numbers)}\nsum={sum(numbers)}\nmean={statistics.mean(numbers)}\n"
Path(args.output, "summary.txt").write_text(summary)
print(summary, end="")
