"""Docker core figures, measured side by side in one run (issue: itwin-run core).

  - N trivial chained python steps (--steps, 3 by default): itwin-run wall time / the same N raw `docker run --rm`
    calls (goal <= 0.7 for 3, <= 0.6 for 10), and the cost of a step (a run's time / N; 200 steps: per-step cost)
  - the same steps: itwin-run / cwltool running the equivalent CWL workflow (goal <= 0.3)
  - image resolution on a warm rerun: ms per step, and builds (goal <= 50 ms, 0 builds)
  - --floor: what no run of this design goes below, its parts timed in the same rounds: the CLI up to a planned run
    (`--dry-run`: imports, the workflow, image resolution), one network namespace (the run's holder made and started) and
    the N steps' containers, made ahead, joining it (start to exit, one after another); their sum / raw docker run

Run: .venv/bin/python bench/core.py [--repeat N] [--steps N] [--no-cwltool] [--floor] [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import baseline_env, chain, remove_project  # noqa: E402

BIN = Path(sys.executable).parent
TOOL = """cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: IMAGE}
baseCommand: [python, -c, pass]
inputs:
  prev: {type: Directory?, inputBinding: {prefix: --input}}
outputs:
  out: {type: Directory, outputBinding: {glob: .}}
"""


def cwl_chain(n: int) -> str:
    return ("cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\nsteps:\n"
            + "".join(f"  s{i}: {{run: s{i}.cwl, in: {{{f'prev: s{i - 1}/out' if i else ''}}}, out: [out]}}\n"
                      for i in range(n)))


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def floor(tmp: Path, image: str, n: int) -> tuple[float, float]:
    """Seconds for the run's network holder to be made and started (a network namespace of its own, as every raw
    `docker run` makes) and for n containers of the steps, created beforehand, each started once the one before has
    exited, in its namespace."""
    from runner.engines.docker import client, image_id
    from runner.engines.docker.client import SHM_SIZE, UNPRIVILEGED, security_options
    from runner.engines.docker.holder import NetworkHolder

    api = client().api
    start = time.perf_counter()
    holder = NetworkHolder(api, "itwin-run/base:latest" if image_id("itwin-run/base:latest") else image, {})
    if not holder.running():
        raise SystemExit(f"the network holder did not start: {holder.error}")
    netns = time.perf_counter() - start
    ids: list[str] = []
    try:
        for i in range(n):
            out = tmp / "data" / f"d{i}"
            host = api.create_host_config(binds={str(tmp): {"bind": str(tmp), "mode": "ro"}, str(out): {"bind": str(out)}},
                                          init=True, shm_size=SHM_SIZE, network_mode=holder.network_mode(),
                                          **security_options())
            ids.append(api.create_container(image, command=["python", "-c", "pass", "--output", str(out)],
                                            user=UNPRIVILEGED, working_dir=str(tmp), host_config=host)["Id"])
        start = time.perf_counter()
        for cid in ids:
            api.start(cid)
            api.wait(cid)
        return netns, time.perf_counter() - start
    finally:
        for cid in ids:
            api.remove_container(cid, force=True)
        holder.remove(wait=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="the chain's length")
    ap.add_argument("--no-cwltool", action="store_true", help="leave cwltool out (a long chain)")
    ap.add_argument("--floor", action="store_true", help="time the parts a run of this design cannot go below")
    ap.add_argument("--baseline", type=Path, help="another checkout (an older commit, say): its runner is measured in "
                                                  "the same loop, through PYTHONPATH")
    args = ap.parse_args()
    if args.baseline and not (args.baseline / "runner").is_dir():
        ap.error(f"--baseline {args.baseline}: no runner/ there (a checkout of another commit)")
    tmp = Path(tempfile.mkdtemp(prefix="itwin-bench-"))
    tmp.chmod(0o755)  # a project as people have them (mkdtemp's are private): as root, steps run unprivileged
    try:
        n = args.steps
        workflow_text = chain(n, env_file="./bench-core/requirements.txt")
        (tmp / "workflow.yml").write_text(workflow_text)
        (tmp / "baseline.yml").write_text(workflow_text)
        (tmp / "bench-core").mkdir()
        (tmp / "bench-core" / "requirements.txt").write_text("# base only\n")
        itwin = [str(BIN / "itwin-run")]
        subprocess.run([*itwin, "build", "workflow.yml"], cwd=tmp, check=True, capture_output=True)
        base_env = baseline_env(args.baseline) if args.baseline else None
        if base_env and subprocess.run([*itwin, "validate", "baseline.yml"], cwd=tmp, capture_output=True,
                                           env=base_env).returncode:
            # a checkout from before allow_empty_output neither knows the field nor needs it
            (tmp / "baseline.yml").write_text(workflow_text.replace(", allow_empty_output: true", ""))
        if base_env:  # its images too (another template is another tag): the loop then times runs only
            subprocess.run([*itwin, "build", "baseline.yml"], cwd=tmp, check=True, capture_output=True,
                           env=base_env)
        image = subprocess.run([*itwin, "build", "workflow.yml"], cwd=tmp, check=True, capture_output=True,
                               text=True).stdout.split()[1]
        for i in range(n):
            (tmp / f"s{i}.cwl").write_text(TOOL.replace("IMAGE", image))
        (tmp / "wf.cwl").write_text(cwl_chain(n))
        data = tmp / "data"

        def raw() -> float:
            start = time.perf_counter()
            for i in range(n):
                out = data / f"d{i}"
                out.mkdir(parents=True, exist_ok=True)
                subprocess.run(["docker", "run", "--rm", "-v", f"{tmp}:{tmp}:ro", "-v", f"{out}:{out}", "-w", str(tmp),
                                image, "python", "-c", "pass", "--output", str(out)],
                               check=True, capture_output=True)
            return time.perf_counter() - start

        cwl_out = tmp / "cwl-out"
        results: dict[str, list[float]] = {"raw docker run": [], "itwin-run": []}
        if not args.no_cwltool:
            results["cwltool"] = []
        if args.baseline:
            results["baseline"] = []
        parts: dict[str, list[float]] = {"CLI to a planned run": [], "a network namespace": [], f"{n} joined steps": []}
        for _ in range(args.repeat):
            results["raw docker run"].append(raw())
            results["itwin-run"].append(timed([*itwin, "--force", "workflow.yml"], tmp))  # run, not skip
            if base_env:
                results["baseline"].append(timed([*itwin, "--force", "baseline.yml"], tmp, base_env))
            if args.floor:
                parts["CLI to a planned run"].append(timed([*itwin, "--dry-run", "--force", "workflow.yml"], tmp))
                for key, took in zip(list(parts)[1:], floor(tmp, image, n), strict=True):
                    parts[key].append(took)
            if args.no_cwltool:
                continue
            results["cwltool"].append(timed([str(BIN / "cwltool"), "--quiet", "--outdir", str(cwl_out), "--tmpdir-prefix",
                                             f"{tmp}/cwl-tmp/", "--tmp-outdir-prefix", f"{tmp}/cwl-tmp/", "wf.cwl"], tmp))

        from runner import plan, workflow
        from runner.engines.docker import DockerBuilder
        from runner.images import BuildOptions

        wf = workflow.load(tmp / "workflow.yml", root=tmp)
        per_step = []
        for _ in range(args.repeat):
            builder = DockerBuilder()  # resolve the base image again, as a fresh process does
            start = time.perf_counter()
            # the build options the CLI takes (the host's wheelhouse included), so that the images it built are found
            images = plan.resolve_images(wf, builder, BuildOptions.from_env(), build=False)
            per_step.append((time.perf_counter() - start) / len(wf.steps) * 1000)
            assert all(present for _, present in images.values()), "warm rerun would build"

        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"{n} trivial chained steps, median of {args.repeat} alternating rounds (seconds; a step's: the run's / {n}):")
        for k, v in med.items():
            print(f"  {k:15s} {v:.3f}  a step {v / n:.3f}   runs: {' '.join(f'{x:.2f}' for x in results[k])}")
        print(f"itwin-run / raw docker run = {med['itwin-run'] / med['raw docker run']:.2f}  (goal <= 0.7 for 3, 0.6 for 10)")
        if "cwltool" in med:
            print(f"itwin-run / cwltool        = {med['itwin-run'] / med['cwltool']:.2f}  (goal <= 0.3)")
        if args.baseline:
            print(f"itwin-run / baseline       = {med['itwin-run'] / med['baseline']:.2f}  ({args.baseline})")
        if args.floor:
            low = {k: statistics.median(v) for k, v in parts.items()}
            print(f"the design's floor: {' + '.join(f'{k} {v:.3f}' for k, v in low.items())} = {sum(low.values()):.3f} s"
                  f" = {sum(low.values()) / med['raw docker run']:.2f} of raw docker run")
        print(f"warm image resolution: {statistics.median(per_step):.1f} ms per step, 0 builds  (goal <= 50 ms)")
    finally:
        remove_project(tmp)


if __name__ == "__main__":
    main()
