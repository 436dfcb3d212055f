"""The Docker engine against the real daemon: the toy workflow end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runner.engines.docker import DockerBuilder, gpu_requests
from tests.conftest import ITWIN_RUN, LABEL, itwin, set_word, source_project
from tests.services import change_packages

pytestmark = pytest.mark.docker

EXPECTED_SUMMARY = "sum=55\nmarker=from the Dockerfile env\ngreeting=hello\nhost_env_leak=False\n"


def test_toy_workflow_outputs_and_contract(docker_client, toy, no_leftovers):
    res = itwin("--engine", "docker", "workflow.yml", cwd=toy, env={"ITWIN_TOY_HOST_VAR": "leak?"})
    assert res.returncode == 0, res.stderr
    data = toy / "data"
    assert (data / "raw" / "numbers.txt").read_text() == "1\n2\n3\n4\n5\n"
    assert (data / "squares" / "squares.txt").read_text() == "1\n4\n9\n16\n25\n"
    assert (data / "summary" / "summary.txt").read_text() == EXPECTED_SUMMARY  # declared vars in, host env out
    # a write to an input fails inside the step
    assert (data / "squares" / "input-check.txt").read_text() == "input read-only: Read-only file system\n"
    assert not (data / "raw" / "tamper.txt").exists()
    # shell metacharacters, lists and booleans reach the program literally
    args = json.loads((data / "raw" / "args.json").read_text())
    assert args["label"] == "a; b $(touch /tmp/pwned) `id` 'q' \"dq\" *"
    assert args["tag"] == ["x", "y z"] and args["verbose"] is True and args["quiet"] is False
    assert args["argv"][:2] == ["--output", str(data / "raw")]
    # output streamed with a step prefix, and kept in the run's log directory
    assert "generate | generated 5 numbers" in res.stdout
    assert "summarize | sum=55" in res.stdout
    logs = list((toy / ".itwin-run" / "runs").glob("*/square.log"))
    assert len(logs) == 1 and "input read-only" in logs[0].read_text()
    assert "env.prefix" in res.stderr  # said once that the conda prefix is ignored


def test_unchanged_rerun_builds_nothing_and_env_change_rebuilds_one(docker_client, toy, no_leftovers):
    first = itwin("build", "workflow.yml", cwd=toy)
    assert first.returncode == 0, first.stderr
    before = dict(line.split("\t") for line in first.stdout.split("\n") if line)
    again = itwin("build", "workflow.yml", cwd=toy)
    assert again.returncode == 0 and "built" not in again.stderr
    assert dict(line.split("\t") for line in again.stdout.split("\n") if line) == before

    env = toy / "envs" / "environment.yml"
    env.write_text(env.read_text() + "# a comment: the same packages, the same image\n")
    again = itwin("build", "workflow.yml", cwd=toy)
    assert again.returncode == 0 and "built" not in again.stderr, again.stderr
    change_packages(env, time.time_ns())
    changed = itwin("build", "workflow.yml", cwd=toy)
    assert changed.returncode == 0, changed.stderr
    after = dict(line.split("\t") for line in changed.stdout.split("\n") if line)
    try:
        assert changed.stderr.count("built ") == 1 and "for square" in changed.stderr
        assert after["square"] != before["square"]
        assert after["generate"] == before["generate"] and after["summarize"] == before["summarize"]
    finally:
        docker_client.images.remove(after["square"], force=True)


def test_env_files_with_the_same_packages_share_one_image(docker_client, tmp_path, no_leftovers):
    """Two env files (a requirements file, a conda file) naming the same packages: one image, built once, the
    second a name for it; a comment edited in either builds nothing."""
    tmp_path.chmod(0o755)
    packages = f"setuptools!=0.0.{time.time_ns()}"  # never built before: the first build is real
    (tmp_path / "a.txt").write_text(f"# the a steps\n{packages}  # what they need\n")
    (tmp_path / "b.yml").write_text(f"name: b\ndependencies:\n  - python=3.11\n  - pip\n  - pip: ['{packages}']\n")
    (tmp_path / "wf.yml").write_text("steps:\n  - a: {command: 'python -c pass', env: {file: a.txt}}\n"
                                     "  - b: {command: 'python -c pass', env: {file: b.yml}}\n")
    res = itwin("build", "wf.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    refs = dict(line.split("\t") for line in res.stdout.splitlines())
    assert refs["a"] != refs["b"] and res.stderr.count("built ") == 1, res.stderr
    assert "the image made for the same content, not rebuilt" in res.stderr
    assert docker_client.images.get(refs["a"]).id == docker_client.images.get(refs["b"]).id
    (tmp_path / "a.txt").write_text(f"{packages}\n# comments moved\n\n")
    res = itwin("build", "wf.yml", cwd=tmp_path)
    assert res.returncode == 0 and dict(line.split("\t") for line in res.stdout.splitlines()) == refs
    assert "built" not in res.stderr and "not rebuilt" not in res.stderr, res.stderr
    for ref in refs.values():
        docker_client.images.remove(ref)


def test_runs_started_together_build_a_new_image_once(docker_client, tmp_path):
    """Two projects whose steps need the same new image, built at the same moment: one process builds it, the other
    waits for it and builds nothing (the image gets its name too)."""
    dockerfile = ("ARG ITWIN_BASE\nFROM ${ITWIN_BASE}\n"
                  f"RUN python3 -c 'import time; time.sleep(8)'  # {time.time_ns()}: never built before\n")
    projects = [tmp_path / "one", tmp_path / "two"]
    for project in projects:
        project.mkdir()
        (project / "Dockerfile").write_text(dockerfile)
        (project / "wf.yml").write_text("steps:\n  - a: {command: 'python -c pass', env: {file: ./Dockerfile}}\n")
    procs = [subprocess.Popen([*ITWIN_RUN, "build", "wf.yml"], cwd=p, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in projects]
    done = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], done
    refs = [out.split()[1] for out, _ in done]
    assert len({docker_client.images.get(ref).id for ref in refs}) == 1, refs
    said = sorted((err for _, err in done), key=lambda err: err.count("built "))
    assert [err.count("built ") for err in said] == [0, 1], said
    assert "waiting for another process that makes " in said[0] and "not rebuilt" in said[0], said
    for ref in refs:
        docker_client.images.remove(ref)


def test_outputs_belong_to_requested_uid(docker_client, toy, no_leftovers):
    res = itwin("workflow.yml", "--user", "1234:2345", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert "generate | generated 5 numbers as uid 1234" in res.stdout
    for f in (toy / "data" / "raw" / "numbers.txt", toy / "data" / "summary" / "summary.txt"):
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (1234, 2345)


def test_failing_step_reports_code_and_tail_and_leaves_no_container(docker_client, toy, no_leftovers):
    (toy / "steps" / "square.py").write_text("import sys\nprint('about to fail')\nsys.exit(7)\n")
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 1  # a step failed: its own code is in the message
    assert "step 'square' failed with exit code 7" in res.stderr
    assert "square | about to fail" in res.stderr  # the log tail
    assert "Traceback" not in res.stderr
    assert not (toy / "data" / "summary").exists()  # nothing after the failure ran
    assert (toy / "data" / "raw" / "numbers.txt").exists()  # earlier outputs are kept


def test_dry_run_prints_plan_and_runs_nothing(docker_client, toy, no_leftovers):
    res = itwin("--dry-run", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert "step generate" in res.stdout and f"mount  {toy} -> {toy} (ro)" in res.stdout
    assert f"mount  {toy / 'data/raw'} -> {toy / 'data/raw'} (ro)" in res.stdout
    assert not (toy / "data").exists()


def test_build_failure_shows_pip_lines_and_tags_nothing(docker_client, toy, no_leftovers):
    (toy / "envs" / "requirements.txt").write_text("this-package-does-not-exist-itwin==0.0.1\n")
    res = itwin("build", "workflow.yml", cwd=toy)
    assert res.returncode == 3
    assert "build of itwin-run/envs-requirements:" in res.stderr and "for step 'generate' failed" in res.stderr
    assert "No matching distribution found for this-package-does-not-exist-itwin" in res.stderr
    assert "Traceback" not in res.stderr
    tag = res.stderr.split("build of ")[1].split(" ")[0]
    assert not docker_client.images.list(name=tag)


def test_conda_package_is_a_clear_error(docker_client, toy):
    (toy / "envs" / "environment.yml").write_text("dependencies:\n  - python=3.11\n  - pytorch=2.1\n")
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith(
        "environment.yml:3:5: dependencies[1]: conda package 'pytorch=2.1' is not supported (no conda channel is "
        "used): list it under 'pip:' as 'torch==2.1'")


def nvidia(client) -> bool:
    return "nvidia" in client.info().get("Runtimes", {})


def test_gpu_request_without_nvidia_runtime_is_one_clear_line(docker_client, toy, no_leftovers):
    if nvidia(docker_client):
        pytest.skip("this daemon has the NVIDIA runtime: test_gpu_step_sees_the_gpus_it_asked_for runs instead")
    res = itwin("workflow.yml", "--gpus", "all", cwd=toy)
    assert res.returncode == 1
    assert "asks for GPUs (all) but this Docker daemon has no NVIDIA runtime: install nvidia-container-toolkit" \
        in res.stderr
    assert "Traceback" not in res.stderr


def test_gpu_step_sees_the_gpus_it_asked_for(docker_client, toy, no_leftovers):
    if not nvidia(docker_client):
        pytest.skip("this daemon has no NVIDIA runtime (a CPU host): bench/gpu_check.sh runs GPUs on a GPU host")
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace("command: python ./steps/generate.py", "command: nvidia-smi -L\n      gpus: [0]\n"
                                                                                       "      allow_empty_output: true"))
    res = itwin("--only", "generate", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(re.findall(r"generate \| GPU \d+:", res.stdout)) == 1, res.stdout  # device 0 alone


def test_gpu_requests_reach_the_daemon(docker_client):
    """What the daemon stores for each form of `gpus:` (created, never started: no GPU is needed to check it)."""
    assert gpu_requests(None) == [] and gpu_requests(0) == []
    ref = DockerBuilder().base()
    slurm = {"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}  # the job's GPUs: host 2 and 3
    want = [("all", {}, -1, []), (2, {}, 2, []), ((0, 3), {}, 0, ["0", "3"]),
            (1, slurm, 0, ["2"]), ("all", slurm, 0, ["2", "3"]), ((1,), slurm, 0, ["3"]),
            (1, {"CUDA_VISIBLE_DEVICES": "1"}, 0, ["1"])]  # never the node's first GPU when given others
    for gpus, env, count, ids in want:
        made = docker_client.api.create_container(ref, ["true"], labels={"org.itwin-run.test": "1"},
                                                  host_config=docker_client.api.create_host_config(
                                                      device_requests=gpu_requests(
                                                          list(gpus) if isinstance(gpus, tuple) else gpus, env)))
        try:
            (request,) = docker_client.api.inspect_container(made["Id"])["HostConfig"]["DeviceRequests"]
        finally:
            docker_client.api.remove_container(made["Id"], force=True)
        assert (request["Count"], request["DeviceIDs"], request["Capabilities"]) == (count, ids, [["gpu"]]), request


def test_step_gpus_field_and_cli_override_reach_the_job(tmp_path, toy):
    from runner import plan, workflow

    text = (toy / "workflow.yml").read_text().replace("      command: python ./steps/square.py",
                                                      "      command: python ./steps/square.py\n      gpus: [1]")
    (toy / "workflow.yml").write_text(text)
    wf = workflow.load(toy / "workflow.yml", root=toy)
    assert plan.job_for(wf, wf.step("square"), "img", "1:1", None, "r").gpus == [1]
    assert plan.job_for(wf, wf.step("square"), "img", "1:1", "all", "r").gpus == "all"
    assert plan.job_for(wf, wf.step("generate"), "img", "1:1", None, "r").gpus is None


def test_daemon_not_running_is_one_line(toy):
    res = itwin("workflow.yml", cwd=toy, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert res.returncode == 3
    assert res.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Docker daemon")
    assert "Traceback" not in res.stderr


def test_base_image_uses_host_ca_and_runs_as_any_uid(docker_client):
    ref = DockerBuilder().base()
    out = docker_client.containers.run(ref, ["sh", "-c", "id -u; echo $HOME; touch $HOME/x && echo ok; "
                                              "python -c 'import sys; print(sys.version_info[:2])'"],
                                       user="4321:4321", remove=True).decode()
    assert out.split("\n")[:4] == ["4321", "/home/itwin", "ok", "(3, 11)"]


@pytest.mark.skipif(not Path("/etc/ssl/certs/ca-certificates.crt").exists(),
                    reason="this host has no CA bundle at /etc/ssl/certs/ca-certificates.crt to carry")
def test_base_image_carries_the_hosts_ca_bundle(docker_client):
    # its digest, not its 200 KB: a container's long output read back at its end came back cut short once (CI)
    said = docker_client.containers.run(DockerBuilder().base(), ["sha256sum", "/etc/ssl/certs/ca-certificates.crt"],
                                        remove=True)
    assert said.split()[0].decode() == hashlib.sha256(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()).hexdigest()


def test_prebuilt_local_image_runs(docker_client, toy, no_leftovers):
    ref = DockerBuilder().base()
    text = (toy / "workflow.yml").read_text().replace("env: {file: ./envs/requirements.txt}", f"env: {{image: {ref}}}")
    (toy / "workflow.yml").write_text(text)
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert (toy / "data" / "summary" / "summary.txt").read_text() == EXPECTED_SUMMARY
    shutil.rmtree(toy / "data")


def test_out_of_disk_during_build_is_one_clear_line(docker_client, toy, no_leftovers):
    dockerfile = toy / "envs" / "summarize" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + 'RUN python3 -c "import errno, os; '
                          'raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))"\n')
    res = itwin("build", "workflow.yml", cwd=toy)
    assert res.returncode == 3
    assert not [ln for ln in res.stderr.splitlines() if ln.startswith("Traceback")], res.stderr  # the build's own is quoted
    assert res.stderr.strip().splitlines()[-1].endswith(
        "failed: no space left on device (free disk space, e.g. `docker image prune`)")


def test_steps_get_a_shared_memory_large_enough_for_loader_workers(docker_client, toy, no_leftovers):
    """Docker's default /dev/shm is 64 MB, which kills PyTorch DataLoader workers; steps get 1 GB."""
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace(
        "command: python ./steps/generate.py",
        "command: python -c \"open('/dev/shm/big', 'wb').write(bytes(256 << 20)); print('256 MB in /dev/shm')\"\n"
        "      allow_empty_output: true"))
    res = itwin("--only", "generate", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert "generate | 256 MB in /dev/shm" in res.stdout


def test_build_feedback_without_a_terminal_and_errors_that_name_the_env_file(docker_client, toy, no_leftovers):
    env = toy / "envs" / "requirements.txt"
    env.write_text("this-package-does-not-exist-itwin==0.0.1\n")
    res = itwin("build", "workflow.yml", cwd=toy)  # output to pipes, as in CI or `| tee`
    assert "\x1b" not in res.stdout + res.stderr
    assert "building itwin-run/envs-requirements:" in res.stderr and "(its progress every 20 s)" in res.stderr
    error = next(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
    assert error.endswith(f"for step 'generate' failed (env file {env}): No matching distribution found for "
                          "this-package-does-not-exist-itwin==0.0.1")
    assert "-r requirements.txt" not in res.stderr  # the in-image file is not the user's


def on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, bytes]:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as in an interactive shell."""
    import pty
    import subprocess

    from tests.conftest import ITWIN_RUN

    main, secondary = pty.openpty()
    proc = subprocess.Popen([*ITWIN_RUN, *args], cwd=cwd, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return proc.wait(timeout=600), out


def test_no_escape_codes_on_a_terminal_with_no_color(docker_client, toy, no_leftovers):
    env = toy / "envs" / "requirements.txt"
    env.write_text(env.read_text() + f"# {os.getpid()}: a build\n")
    code, out = on_a_terminal(["workflow.yml"], toy, {**os.environ, "NO_COLOR": "1"})
    assert code == 0, out[-2000:]
    assert b"\x1b" not in out and b"summarize | sum=55" in out


def test_a_terminal_shows_a_live_line_per_running_step(docker_client, toy, no_leftovers):
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace("command: python ./steps/generate.py",
                                         "command: python -u -c \"import time; print('warming'); time.sleep(2)\"\n"
                                         "      allow_empty_output: true"))
    code, out = on_a_terminal(["--only", "generate", "workflow.yml"], toy,
                              {k: v for k, v in os.environ.items() if k != "NO_COLOR"})
    assert code == 0, out[-2000:]
    text = out.decode()
    assert re.search(r"▶ generate\x1b\[0m +\d+s \x1b\[2mwarming", text), text[-2000:]  # elapsed, last line
    assert "generate | warming" in text  # the output itself still scrolls above it


def test_a_command_not_in_the_image_says_so(docker_client, toy, no_leftovers):
    wf = toy / "workflow.yml"
    wf.write_text(wf.read_text().replace("command: python ./steps/generate.py", "command: fitter ./steps/generate.py"))
    res = itwin("--only", "generate", "workflow.yml", cwd=toy)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "error: command 'fitter' not found in the image of step 'generate' (PATH /opt/venv/bin:" in res.stderr


@pytest.mark.alone  # counts the untagged images on the daemon
def test_a_source_edit_rebuilds_only_the_source_layer(docker_client, tmp_path, no_leftovers):
    """env.source is installed in layers of their own on top of the dependency image: after an edit of the source
    the new image shares every layer but the last two with the old one, and runs the edited code. No build, a
    failed one included, leaves an untagged image behind (the classic builder's stages)."""
    tmp_path.chmod(0o755)

    def untagged() -> set[str]:
        return {i.id for i in docker_client.images.list(filters={"dangling": True, "label": LABEL})}

    left = untagged()
    source_project(tmp_path)

    refs: dict[str, str] = {}

    def build() -> list[str]:
        res = itwin("build", "wf.yml", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        layers = docker_client.images.get(res.stdout.split()[1]).attrs["RootFS"]["Layers"]
        refs[layers[-1]] = res.stdout.split()[1]
        return layers

    def build_ref(layers: list[str]) -> str:
        return refs[layers[-1]]

    before = build()
    set_word(tmp_path, "second")
    after = build()
    assert len(after) == len(before) and after[:-2] == before[:-2] and after[-2:] != before[-2:]
    res = itwin("wf.yml", cwd=tmp_path)
    assert res.returncode == 0 and "say | script second" in res.stdout, res.stderr[-2000:]
    assert untagged() <= left
    first, second = (build_ref(tag) for tag in (before, after))
    deps = docker_client.images.get(second).labels["org.itwin-run.dependencies"]
    assert docker_client.images.get(first).labels["org.itwin-run.dependencies"] == deps
    rows = {line.split()[1]: line for line in itwin("images", cwd=tmp_path).stdout.splitlines()[1:]}
    assert f"(dependencies of {second})" in rows[deps] and "wf.yml/say" in rows[second]
    dry = itwin("prune", "--dry-run", cwd=tmp_path).stdout
    assert f"would remove  docker  {first} " in dry and deps not in dry and second not in dry
    set_word(tmp_path, "third")
    (tmp_path / "req.txt").write_text("itwin-run-no-such-package-zz\n")  # the dependency image fails to build
    assert itwin("build", "wf.yml", cwd=tmp_path).returncode == 3
    assert untagged() <= left


def test_sources_build_where_pypi_cannot_be_reached(docker_client, tmp_path, no_leftovers):
    """A site whose builds reach no package index (here a Docker client config with a proxy that answers nothing,
    as an HPC site's proxy settings would be): a source with a setuptools build builds with the image's own
    setuptools and wheel, before and after an edit. pip's isolated build would fetch setuptools and fail."""
    source_project(tmp_path, word=f"offline-{time.time_ns()}")  # never built before: the build is real
    config = tmp_path / "docker-config"
    config.mkdir()
    dead = "http://127.0.0.1:9"
    (config / "config.json").write_text(json.dumps({"proxies": {"default": {"httpProxy": dead, "httpsProxy": dead}}}))
    offline = {"DOCKER_CONFIG": str(config)}
    res = itwin("build", "--verbose", "wf.yml", cwd=tmp_path, env=offline)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "build say | build-sources: with the image's build tools: source/0" in res.stderr
    assert "[dim]" not in res.stderr  # verbose build lines carry no markup where stderr is not a terminal
    set_word(tmp_path, "second")
    res = itwin("wf.yml", cwd=tmp_path, env=offline)
    assert res.returncode == 0 and "say | script second" in res.stdout, res.stderr[-3000:]


def test_requirements_may_name_a_local_package_and_a_wheel(docker_client, tmp_path, no_leftovers):
    """A requirements file naming `./libs/mypkg` and a wheel file: both installed (with pip's own resolution) from
    the build context, and an edit of the local package gives a new image that runs the edited code."""
    import subprocess
    import sys

    tmp_path.chmod(0o755)
    pkg = tmp_path / "libs" / "mypkg"
    (pkg / "mypkg").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = '
                                        '"setuptools.build_meta"\n[project]\nname = "mypkg"\nversion = "1.0"\n')
    (pkg / "mypkg" / "__init__.py").write_text("WORD = 'first'\n")
    other = tmp_path / "other"
    (other / "otherpkg").mkdir(parents=True)
    (other / "pyproject.toml").write_text((pkg / "pyproject.toml").read_text().replace("mypkg", "otherpkg"))
    (other / "otherpkg" / "__init__.py").write_text("WORD = 'wheel'\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheels"), str(other)], check=True)
    (wheel,) = (tmp_path / "wheels").glob("otherpkg-*.whl")
    (tmp_path / "req.txt").write_text(f"./libs/mypkg\n./wheels/{wheel.name}  # a wheel file\n")
    (tmp_path / "wf.yml").write_text("datasets:\n  out: {location: ./data/out}\nsteps:\n  - say:\n      output: out\n"
                                     "      command: python -c \"import mypkg, otherpkg; print(mypkg.WORD, "
                                     "otherpkg.WORD)\"\n      env: {file: req.txt}\n      allow_empty_output: true\n")
    res = itwin("wf.yml", cwd=tmp_path)
    assert res.returncode == 0 and "say | first wheel" in res.stdout, res.stderr[-2000:]
    (pkg / "mypkg" / "__init__.py").write_text("WORD = 'second'\n")
    res = itwin("wf.yml", cwd=tmp_path)
    assert res.returncode == 0 and "say | second wheel" in res.stdout, res.stderr[-2000:]


def test_a_wheelhouse_is_served_to_the_build_and_kept_out_of_the_image(docker_client, tmp_path, no_leftovers):
    """--wheelhouse DIR: pip in the build installs a package no index has from DIR, which the builder serves to the
    build over HTTP on this machine's loopback; no layer of the image holds a wheel of DIR."""
    from tests.services import probe_wheelhouse

    tmp_path.chmod(0o755)
    wheelhouse = probe_wheelhouse(tmp_path, tmp_path.name)
    res = itwin("--wheelhouse", str(wheelhouse), "wf.yml", cwd=tmp_path)
    assert res.returncode == 0 and f"say | probe {tmp_path.name}" in res.stdout, res.stderr[-2000:]
    built = itwin("build", "--wheelhouse", str(wheelhouse), "wf.yml", cwd=tmp_path)  # nothing to build: says the image
    image = docker_client.images.get(built.stdout.split("\n")[0].split()[1])
    out = docker_client.containers.run(image.id, ["find", "/", "-xdev", "-name", "itwin_wh_probe-*.whl"], remove=True)
    assert out.strip() == b"", out
    assert not any("COPY" in (h.get("CreatedBy") or "") and "wheels" in (h.get("CreatedBy") or "")
                   for h in image.history())


@pytest.mark.alone  # prune: what no record names, of any project
def test_images_lists_what_itwin_run_made_and_prune_removes_what_nothing_names(docker_client, toy, no_leftovers):
    """`images` names each image by the step records that use it; `prune` removes an image no record names any
    more, keeps the ones records name, the base image, an image a container uses, and images itwin-run did not make."""
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    env = toy / "envs" / "requirements.txt"
    change_packages(env, time.time_ns())  # another image
    old = itwin("build", "workflow.yml", cwd=toy).stdout.split("\n")[0].split()[1]  # generate's image, as built now
    assert itwin("workflow.yml", cwd=toy).returncode == 0
    change_packages(env, time.time_ns())  # and another
    assert itwin("workflow.yml", cwd=toy).returncode == 0  # `old` is now named by no record
    current = {line.split()[1] for line in itwin("build", "workflow.yml", cwd=toy).stdout.splitlines()}
    listed = itwin("images", cwd=toy)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines()[1:]}
    for ref in current:
        assert "workflow.yml/" in rows[ref], rows[ref]  # named by its step record
    assert rows[old].rstrip().endswith("-")
    busy = docker_client.containers.create(old, command=["true"])  # a container uses it: kept
    try:
        dry = itwin("prune", "--dry-run", cwd=toy)
        assert dry.returncode == 0 and old not in dry.stdout and not any(r in dry.stdout for r in current)
    finally:
        busy.remove(force=True)
    dry = itwin("prune", "--dry-run", cwd=toy)
    assert f"would remove  docker  {old}" in dry.stdout and "itwin-run/base:" not in dry.stdout
    assert not any(f"  {r} " in dry.stdout for r in current)
    docker_client.images.get(old)  # a dry run removes nothing
    import io
    import tarfile

    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        tar.addfile(info, io.BytesIO(b""))
    docker_client.api.import_image_from_data(empty.getvalue(), repository="mine/not-itwin", tag="x")  # not ours
    try:
        assert "mine/not-itwin" not in itwin("images", cwd=toy).stdout
        res = itwin("prune", cwd=toy)
        assert res.returncode == 0 and f"removed  docker  {old}" in res.stdout, res.stdout + res.stderr
        for ref in current:
            docker_client.images.get(ref)  # still there
        docker_client.images.get("mine/not-itwin:x")
        assert "up to date" in itwin("workflow.yml", cwd=toy).stderr
    finally:
        docker_client.images.remove("mine/not-itwin:x")
