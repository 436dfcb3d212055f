"""The Apptainer engine against a real Apptainer: same behaviour and outputs as the Docker engine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import itwin, set_word, source_project

pytestmark = pytest.mark.docker  # step images are built by the Docker engine, then converted


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}


def test_toy_workflow_matches_docker_byte_for_byte(docker_client, apptainer_env, toy, no_leftovers):
    me = f"{os.getuid()}:{os.getgid()}"  # apptainer runs as the caller: the same uid for Docker
    res = itwin("--engine", "docker", "--user", me, "workflow.yml", cwd=toy, env={"ITWIN_TOY_HOST_VAR": "leak?"})
    assert res.returncode == 0, res.stderr
    docker_out = outputs(toy)
    docker_lines = [ln for ln in res.stdout.splitlines() if "|" in ln]
    shutil.rmtree(toy / "data")
    res = itwin("--engine", "apptainer", "workflow.yml", cwd=toy, env={**apptainer_env, "ITWIN_TOY_HOST_VAR": "leak?"})
    assert res.returncode == 0, res.stderr
    assert outputs(toy) == docker_out
    assert [ln for ln in res.stdout.splitlines() if "|" in ln] == docker_lines
    # a write to an input fails, the host environment does not leak (--cleanenv), declared vars arrive
    assert b"input read-only: Read-only file system" in docker_out["data/squares/input-check.txt"]
    assert b"host_env_leak=False\n" in docker_out["data/summary/summary.txt"]
    assert b"greeting=hello" in docker_out["data/summary/summary.txt"]


def test_failing_step_same_exit_code_and_tail(docker_client, apptainer_env, toy):
    (toy / "steps" / "square.py").write_text("import sys\nprint('about to fail')\nsys.exit(7)\n")
    res = itwin("--engine", "apptainer", "workflow.yml", cwd=toy, env=apptainer_env)
    assert res.returncode == 1  # a step failed: its own code is in the message
    assert "step 'square' failed with exit code 7" in res.stderr and "square | about to fail" in res.stderr
    assert "Traceback" not in res.stderr


def test_host_home_is_hidden(docker_client, apptainer_env, toy):
    marker = Path.home() / ".itwin-run-home-marker"
    marker.write_text("x")
    try:
        gen = toy / "steps" / "generate.py"
        gen.write_text(f"import pathlib\nprint('home marker visible:', pathlib.Path({str(marker)!r}).exists())\n"
                       + gen.read_text())
        res = itwin("--engine", "apptainer", "workflow.yml", cwd=toy, env=apptainer_env)
        assert res.returncode == 0, res.stderr
        assert "generate | home marker visible: False" in res.stdout
    finally:
        marker.unlink()


def test_user_override_is_a_clear_error(docker_client, apptainer_env, toy):
    res = itwin("--engine", "apptainer", "--user", "1234:1234", "workflow.yml", cwd=toy, env=apptainer_env)
    assert res.returncode == 1
    assert "apptainer runs steps as the calling user" in res.stderr and "Traceback" not in res.stderr


def test_missing_apptainer_is_one_line(toy):
    res = itwin("--engine", "apptainer", "workflow.yml", cwd=toy, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 3
    assert res.stderr.strip().splitlines()[-1].startswith("error: apptainer is not installed")


def test_sources_are_an_overlay_on_a_dependency_sif(docker_client, apptainer_env, tmp_path, no_leftovers):
    """A step with env.source: a dependency SIF converted once and a small squashfs of the sources on top. A source
    edit makes a new overlay only (the dependency SIF is not converted again); outputs match Docker's; `build
    --save` / `load` carry both parts, and a node with no Docker daemon runs from them."""
    source_project(tmp_path)
    cache = tmp_path / "sif"
    env = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(cache)}
    me = f"{os.getuid()}:{os.getgid()}"
    res = itwin("--engine", "docker", "--user", me, "wf.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    docker_out = outputs(tmp_path)
    shutil.rmtree(tmp_path / "data")

    res = itwin("--engine", "apptainer", "wf.yml", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "say | script first" in res.stdout and outputs(tmp_path) == docker_out
    (deps,) = cache.glob("*.sif")
    (first,) = cache.glob("*.sqfs")
    assert first.stat().st_size < 1_000_000 and "converted" in res.stdout + res.stderr
    before = deps.stat().st_mtime_ns

    set_word(tmp_path, "second")
    res = itwin("--engine", "apptainer", "wf.yml", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "say | script second" in res.stdout and (tmp_path / "data/out/word.txt").read_text() == "second\n"
    assert "converted" not in res.stdout + res.stderr  # the dependency SIF is reused as it is
    assert [p.stat().st_mtime_ns for p in cache.glob("*.sif")] == [before] and len(list(cache.glob("*.sqfs"))) == 2

    # cwltool takes one SIF per tool: --cwl asks for the whole image in one file, never DEPS.sif::SOURCES.sqfs
    (tmp_path / "say.cwl").write_text("cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: [mypkg-say]\n"
                                      "inputs: []\noutputs: []\n")
    (tmp_path / "wf.cwl").write_text("cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\nsteps:\n"
                                     "  say: {run: say.cwl, in: [], out: []}\n")
    (tmp_path / "wf.yml").write_text((tmp_path / "wf.yml").read_text() + "workflowFileCWL: wf.cwl\n")
    res = itwin("--engine", "apptainer", "--cwl", "--dry-run", "wf.yml", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dockerImageId" in res.stdout and ".sif" in res.stdout and "::" not in res.stdout

    saved = tmp_path / "saved"
    res = itwin("build", "--engine", "apptainer", "--save", str(saved), "wf.yml", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p.suffix for p in (saved / "sif").iterdir()} == {".sif", ".sqfs"}
    node = {**env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "node-cache"), "DOCKER_HOST": "unix:///nonexistent.sock"}
    res = itwin("load", "--engine", "apptainer", str(saved), cwd=tmp_path, env=node)
    assert res.returncode == 0, res.stderr[-2000:]
    res = itwin("--engine", "apptainer", "--force", "wf.yml", cwd=tmp_path, env=node)
    assert res.returncode == 0 and "say | script second" in res.stdout, res.stderr[-2000:]


def test_concurrent_runs_make_a_new_sif_once(docker_client, apptainer_env, tmp_path, toy):
    """Four runs started together that need the same new SIF (one shared cache): one conversion, all four run."""
    import subprocess

    from tests.conftest import ITWIN_RUN

    env = {**os.environ, **apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "shared-cache")}
    assert itwin("build", "workflow.yml", cwd=toy).returncode == 0  # the Docker images first
    projects = []
    for i in range(4):
        shutil.copytree(toy, tmp_path / f"p{i}", ignore=shutil.ignore_patterns("data", ".itwin-run"))
        projects.append(tmp_path / f"p{i}")
    procs = [subprocess.Popen([*ITWIN_RUN, "--engine", "apptainer", "--only", "generate", "workflow.yml"], cwd=p,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in projects]
    results = [(proc.wait(timeout=600), proc.stderr.read()) for proc in procs]
    assert all(code == 0 for code, _ in results), [err[-1500:] for _, err in results]
    assert sum(err.count("converted ") for _, err in results) == 1, [err[-600:] for _, err in results]
    assert len(list((tmp_path / "shared-cache").glob("*.sif"))) == 1
    assert not list((tmp_path / "shared-cache").glob("*.partial"))
    assert all((p / "data" / "raw" / "numbers.txt").read_text() == "1\n2\n3\n4\n5\n" for p in projects)


def test_a_gpu_step_sees_its_allocation(docker_client, apptainer_env, toy):
    """Under SLURM (CUDA_VISIBLE_DEVICES=2,3 for this job), a `gpus: 1` step sees device 2, not every GPU of the
    node (--cleanenv hid the variable). Without a GPU here, what reaches the step is its environment."""
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace(
        "command: python ./steps/generate.py",
        "command: python -c \"import os; print('visible', os.environ.get('CUDA_VISIBLE_DEVICES'))\"\n      gpus: 1\n"
        "      allow_empty_output: true"))
    res = itwin("--engine", "apptainer", "--only", "generate", "workflow.yml", cwd=toy,
                env={**apptainer_env, "CUDA_VISIBLE_DEVICES": "2,3"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "generate | visible 2\n" in res.stdout, res.stdout


def _sif_facts(sif: Path, env: dict[str, str]) -> dict:
    """What a SIF holds, less what differs between any two builds of it (build date, the SIF's own path)."""
    import json
    import re
    import subprocess

    def run(*cmd: str) -> str:
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        assert res.returncode == 0, res.stderr[-1500:]
        return res.stdout

    inspect = json.loads(run("apptainer", "inspect", "--json", "--all", str(sif)))
    inspect["data"]["attributes"]["labels"].pop("org.label-schema.build-date")
    descriptors = [ln.split("|")[-1].strip() for ln in run("apptainer", "sif", "list", str(sif)).splitlines()
                   if ln.strip()[:1].isdigit()]
    env_in = sorted(ln for ln in run("apptainer", "exec", "--cleanenv", str(sif), "env").splitlines()
                    if str(sif) not in ln and sif.name not in ln)
    offset = run("apptainer", "sif", "list", str(sif)).split("FS (")[0].splitlines()[-1].split("|")[3].split("-")[0]
    files = set()  # (mode, owner, size but a folder's, path -> link target)
    for ln in run("unsquashfs", "-o", offset.strip(), "-lln", str(sif)).splitlines():
        if m := re.match(r"(\S+) (\S+) +(.+?) \d{4}-\d\d-\d\d \d\d:\d\d (.*)$", ln):
            files.add((m[1], m[2], "" if m[1][0] == "d" else m[3], m[4]))
    return {"inspect": inspect, "descriptors": descriptors, "env": env_in, "files": files}


def test_a_local_image_becomes_apptainers_sif_without_its_layer_cache(docker_client, apptainer_env, toy, tmp_path):
    """`apptainer build docker-daemon://` copies each layer gzip-compressed into Apptainer's cache and unpacks it
    again; itwin-run unpacks the image once (docker export) and squashes it. The SIFs hold what Apptainer's own
    conversion puts there: the environment, runscript, labels, definition and inspect metadata, and the same files
    (less the empty ones Docker adds to every container). Nothing goes into Apptainer's layer cache. The image: a
    Dockerfile env with an entry point, labels and variables that need quoting."""
    env_dir = toy / "envs" / "summarize"
    (env_dir / "Dockerfile").write_text((env_dir / "Dockerfile").read_text() + (
        'ENV QUOTED="a \\"b\\" \\$c `d`" EMPTY=""\nLABEL org.example.note="x y"\n'
        'ENTRYPOINT ["/usr/bin/env", "A=1"]\nCMD ["python3", "-c", "print(1)"]\n'))
    (toy / "one.yml").write_text("datasets:\n  squares: {location: ./data/squares}\n  summary: {location: ./data/summary}\n"
                                 "steps:\n  - summarize:\n      input: squares\n      output: summary\n"
                                 "      command: python ./steps/summarize.py\n      env: {file: ./envs/summarize/Dockerfile}\n")
    assert itwin("build", "one.yml", cwd=toy).returncode == 0
    caches = {}
    # Apptainer's own conversion: the one itwin-run falls back on when its own fails (here: no mksquashfs)
    for way, env in (("apptainer", {"ITWIN_RUN_MKSQUASHFS": "/bin/false"}), ("export", {})):
        env = {**apptainer_env, **env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / way / "sif"),
               "APPTAINER_CACHEDIR": str(tmp_path / way / "layers")}
        res = itwin("build", "--engine", "apptainer", "one.yml", cwd=toy, env=env)
        assert res.returncode == 0 and res.stderr.count("converted ") == 1, res.stderr[-2000:]
        assert ("converting it with `apptainer build` instead" in res.stderr) == (way == "apptainer"), res.stderr
        caches[way] = tmp_path / way
    blobs = [p for p in (caches["export"] / "layers").rglob("*") if p.is_file()]
    assert not blobs and list((caches["apptainer"] / "layers").rglob("sha256*")), blobs[:3]
    docker_adds = {"dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}
    for theirs in sorted((caches["apptainer"] / "sif").glob("*.sif")):
        ours = caches["export"] / "sif" / theirs.name
        a, b = _sif_facts(theirs, apptainer_env), _sif_facts(ours, apptainer_env)
        assert a["inspect"] == b["inspect"] and a["descriptors"] == b["descriptors"] and a["env"] == b["env"]
        differ = {f[3].removeprefix("squashfs-root/").split(" -> ")[0] for f in a["files"] ^ b["files"]}
        # the labels' size goes with the build date's (compared above, less the date); the root's mode is a folder's
        assert differ <= docker_adds | {".singularity.d/labels.json", "squashfs-root"}, differ
