import argparse
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--input", required=True)
p.add_argument("--output", required=True)
a = p.parse_args()
numbers = [int(x) for x in Path(a.input, "numbers.txt").read_text().split()]
Path(a.output, "squares.txt").write_text("".join(f"{n * n}\n" for n in numbers))
try:
    Path(a.input, "tamper.txt").write_text("x")
    result = "input writable"
except OSError as exc:
    result = f"input read-only: {exc.strerror}"
Path(a.output, "input-check.txt").write_text(result + "\n")
print(result)
