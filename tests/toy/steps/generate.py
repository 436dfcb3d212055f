import argparse
import json
import os
import sys
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--output", required=True)
p.add_argument("--count", type=int, required=True)
p.add_argument("--label", required=True)
p.add_argument("--tag", action="append")
p.add_argument("--verbose", action="store_true")
p.add_argument("--quiet", action="store_true")
a = p.parse_args()
out = Path(a.output)
(out / "numbers.txt").write_text("".join(f"{i}\n" for i in range(1, a.count + 1)))
(out / "args.json").write_text(json.dumps({"argv": sys.argv[1:], "label": a.label, "tag": a.tag,
                                           "verbose": a.verbose, "quiet": a.quiet}, indent=1) + "\n")
print(f"generated {a.count} numbers as uid {os.getuid()}")
