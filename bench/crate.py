"""RO-Crate figures for the MNIST training run (use-cases/mnist/training-workflow.yml, 1 epoch): the validator's
verdict for provenance-run-crate at REQUIRED severity (offline, ../shared/tools), entities per step, the crate's size
with the data referenced and with --include-data, and how long `itwin-run crate` takes. `--cwl`: the same for the
workflow run through cwltool with `--provenance` (the crate then links cwltool's research object, or holds it).

Run after `make`: .venv/bin/python bench/crate.py [--cwl]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, ITWIN, REPO, mnist  # noqa: E402

SHARED = REPO.parent / "shared"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="itwin-bench-crate-") as tmp:
        root = mnist(Path(tmp) / "project")
        root.chmod(0o755)
        raw = root / "data/mnist/raw"
        raw.mkdir(parents=True)
        for f in (SHARED / "data/mnist").glob("*.gz"):  # the offline 10k set, as `make demo` copies it
            shutil.copy(f, raw)
        wf = root / "use-cases/mnist/training-workflow.yml"
        wf.write_text(wf.read_text().replace("config: ./use-cases/mnist/mnist-ai.yml",
                                             "config: ./use-cases/mnist/mnist-ai.yml\n        max-epochs: 1"))
        how = ["--cwl", "--provenance"] if "--cwl" in sys.argv[1:] else []
        subprocess.run([ITWIN, *how, str(wf.relative_to(root))], cwd=root, check=True, capture_output=True)
        for ro in root.glob(".itwin-run/runs/*/cwl/provenance"):
            print(f"cwltool's research object: {sum(f.stat().st_size for f in ro.rglob('*') if f.is_file()) / 1e6:.2f} MB")
        sizes, seconds = {}, {}
        for name, extra in (("referenced", []), ("with data", ["--include-data"])):
            out = Path(tmp) / f"{name.replace(' ', '-')}.zip"
            start = time.perf_counter()
            res = subprocess.run([ITWIN, "crate", *extra, "-o", str(out)], cwd=root, capture_output=True, text=True,
                                 check=True)
            seconds[name], sizes[name] = time.perf_counter() - start, out.stat().st_size
            print(res.stderr.strip())
        folder = Path(tmp) / "crate"
        with zipfile.ZipFile(Path(tmp) / "referenced.zip") as z:
            z.extractall(folder)
        cache = Path(tmp) / "roc-cache" / "http_cache"
        cache.parent.mkdir()
        subprocess.run([sys.executable, str(SHARED / "tools/rocrate-validator-offline.py"), f"{cache}.sqlite"],
                       check=True, capture_output=True)
        verdict_file = Path(tmp) / "verdict.json"
        subprocess.run([str(BIN / "rocrate-validator"), "-y", "validate", "-p", "provenance-run-crate",
                        "--no-auto-profile", "--offline", "--skip-availability-check", "--cache-path", str(cache),
                        "-f", "json", "-o", str(verdict_file), str(folder)], capture_output=True)
        verdict = json.loads(verdict_file.read_text())
        stats = verdict["statistics"]
        graph = json.loads((folder / "ro-crate-metadata.json").read_text())["@graph"]
        steps = [e for e in graph if e.get("@type") == "HowToStep"]
        print(f"validator, provenance-run-crate at REQUIRED: {'pass' if verdict['passed'] else 'FAIL'} "
              f"({stats['total_passed_checks']} checks passed, {stats['total_failed_checks']} failed, "
              f"{stats['total_skipped_checks']} skipped)")
        print(f"entities: {len(graph)} for {len(steps)} steps ({len(graph) / len(steps):.0f} per step)")
        for name in sizes:
            print(f"crate {name:<10}: {sizes[name] / 1e6:7.2f} MB (zip), made in {seconds[name]:.1f} s")
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
