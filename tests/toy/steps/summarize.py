import argparse
import os
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--input", required=True)
p.add_argument("--output", required=True)
a = p.parse_args()
squares = [int(x) for x in Path(a.input, "squares.txt").read_text().split()]
marker = Path("/opt/marker.txt").read_text().strip()
lines = [f"sum={sum(squares)}", f"marker={marker}", f"greeting={os.environ.get('GREETING')}",
         f"host_env_leak={'ITWIN_TOY_HOST_VAR' in os.environ}"]
Path(a.output, "summary.txt").write_text("\n".join(lines) + "\n")
print(lines[0])
