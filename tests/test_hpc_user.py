"""On the HPC node as its user: a non-root user (useradd) with itwin-run installed from its wheel and no Docker socket
runs Apptainer steps (unprivileged: squashfuse, no capabilities) and SLURM jobs, taking SIFs from one shared cache
that the site filled and the user cannot write."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import SHARED, TOY, itwin
from tests.services import change_packages

pytestmark = pytest.mark.docker

SIF_CACHE = "ITWIN_RUN_SIF_CACHE"


@pytest.fixture(scope="module")
def shared_cache(apptainer_env, docker_client):
    """A SIF cache the site filled (root, where Docker is) with the toy's images; readable by all, writable by root."""
    cache = Path(tempfile.mkdtemp(prefix="itwin-shared-sif-", dir="/tmp"))
    cache.chmod(0o755)
    project = Path(tempfile.mkdtemp(prefix="itwin-site-"))
    shutil.copytree(TOY, project / "toy", ignore=shutil.ignore_patterns("data", ".itwin-run"))
    res = itwin("build", "--engine", "apptainer", "workflow.yml", cwd=project / "toy",
                env={**apptainer_env, SIF_CACHE: str(cache), "ITWIN_RUN_WHEELHOUSE": "none"})
    assert res.returncode == 0, res.stderr[-2000:]
    yield cache
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def hpc_user(user, apptainer_env):
    """The user, allowed to run the lab's Apptainer unprivileged (setup-apptainer.sh --users)."""
    setup = SHARED / "hpc" / "apptainer" / "setup-apptainer.sh"
    deb = SHARED / "hpc" / "apptainer" / "apptainer_1.4.5-2_amd64.deb"
    res = subprocess.run(["bash", str(setup), "--quiet", "--users"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "APPLAB_APPTAINER_DEB": str(deb)})
    assert res.returncode == 0, res.stderr[-2000:]
    return user


def user_env(user, cache: Path) -> dict[str, str]:
    return {"PATH": f"/tmp/applab/bin:{user.bin}:/usr/bin:/bin", SIF_CACHE: str(cache), "ITWIN_RUN_WHEELHOUSE": "none"}


def owners(data: Path) -> set[int]:
    return {p.stat().st_uid for p in data.rglob("*")}


def test_apptainer_steps_run_as_the_user_from_the_shared_cache(hpc_user, shared_cache):
    project = hpc_user.project(TOY, "hpc-toy")
    before = sorted(shared_cache.iterdir())
    res = hpc_user.itwin("--engine", "apptainer", "workflow.yml", cwd=project, env=user_env(hpc_user, shared_cache))
    assert res.returncode == 0, res.stderr[-3000:]
    uid = pwd.getpwnam(hpc_user.name).pw_uid
    assert f"generated 5 numbers as uid {uid}" in res.stdout + res.stderr
    assert owners(project / "data") == {uid}, "every output file is the user's"
    assert (project / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\n")
    assert (project / "data" / "squares" / "input-check.txt").read_text() == "input read-only: Read-only file system\n"
    assert sorted(shared_cache.iterdir()) == before, "the run changed the shared cache"
    again = hpc_user.itwin("--engine", "apptainer", "workflow.yml", cwd=project, env=user_env(hpc_user, shared_cache))
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr[-2000:]


def test_an_image_the_cache_lacks_is_one_line_naming_what_to_do(hpc_user, shared_cache):
    project = hpc_user.project(TOY, "hpc-new-env")
    change_packages(project / "envs" / "requirements.txt", 7)  # a new image: no SIF for it, no Docker to build it
    res = hpc_user.itwin("--engine", "apptainer", "workflow.yml", cwd=project, env=user_env(hpc_user, shared_cache))
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "step 'generate': no SIF for its image" in errors[0], res.stderr[-3000:]
    assert "--wheelhouse none" in errors[0] and "itwin-run build --engine apptainer" in errors[0], errors[0]
    assert not (project / "data" / "raw").exists() or not any((project / "data" / "raw").iterdir())


def test_slurm_jobs_of_a_user_run_apptainer_steps_as_them(hpc_user, shared_cache, slurm_env):
    project = hpc_user.project(TOY, "hpc-slurm")
    env = {**user_env(hpc_user, shared_cache), **{k: v for k, v in slurm_env.items() if k != "PATH"}}
    res = hpc_user.itwin("--executor", "slurm", "--engine", "apptainer", "workflow.yml", cwd=project, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "summarize: COMPLETED" in res.stdout + res.stderr, res.stderr[-3000:]
    assert owners(project / "data") == {pwd.getpwnam(hpc_user.name).pw_uid}
    assert (project / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\n")


def test_a_users_site_profile_gives_slurm_apptainer_the_shared_cache_and_a_folder(hpc_user, shared_cache, slurm_env):
    """#25: the user's ~/.config/itwin-run/sites/lab.yml stands for the flags and variables of the run above: the
    engine, the executor, the SIF cache, a line each job runs before its step, and a folder every step reads."""
    project = hpc_user.project(TOY, "hpc-site")
    (project / "peek.py").write_text(
        "import os, sys\nnote = open(os.environ['SITE_NOTE']).read()\nprint('read:', note.strip())\n"
        "open(os.path.join(sys.argv[sys.argv.index('--output') + 1], 'seen.txt'), 'w').write(note)\n")
    reference = Path(tempfile.mkdtemp(prefix="itwin-site-ref-", dir="/tmp"))
    reference.chmod(0o755)
    (reference / "note.txt").write_text("from the site\n")
    (reference / "note.txt").chmod(0o644)
    (project / "site.yml").write_text(
        "datasets: {seen: {location: ./data/seen}}\nsteps:\n  - peek:\n      output: seen\n      command: python peek.py\n"
        f"      env: {{file: ./envs/requirements.txt, vars: {{SITE_NOTE: {reference}/note.txt}}}}\n")
    sites = hpc_user.home / ".config" / "itwin-run" / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / "lab.yml").write_text(
        "engine: apptainer\nexecutor: slurm\nslurm:\n  setup: ['echo \"site setup ran on $(hostname)\"']\n"
        f"environment: {{ITWIN_RUN_SIF_CACHE: {shared_cache}, ITWIN_RUN_WHEELHOUSE: none}}\nbinds: [{reference}]\n")
    subprocess.run(["chown", "-R", f"{hpc_user.name}:{hpc_user.name}", str(hpc_user.home / ".config"),
                    str(project)], check=True)
    env = {"PATH": f"/tmp/applab/bin:{hpc_user.bin}:/usr/bin:/bin",
           **{k: v for k, v in slurm_env.items() if k != "PATH"}}  # no cache, engine or executor of its own
    try:
        res = hpc_user.itwin("--site", "lab", "site.yml", cwd=project, env=env)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert "peek | site setup ran on " in out and "peek | read: from the site" in out, out[-3000:]
        assert (project / "data" / "seen" / "seen.txt").read_text() == "from the site\n"
        assert owners(project / "data") == {pwd.getpwnam(hpc_user.name).pw_uid}
        manifest = json.loads(max((project / ".itwin-run" / "runs").glob("*/manifest.json")).read_text())
        assert (manifest["site"], manifest["engine"], manifest["executor"]) == ("lab", "apptainer", "slurm")
        without = hpc_user.itwin("--force", "site.yml", cwd=project, env=env)  # the same run, no profile: Docker's
        assert without.returncode != 0 and "Traceback" not in without.stderr, without.stderr[-2000:]
    finally:
        shutil.rmtree(reference, ignore_errors=True)
        shutil.rmtree(sites, ignore_errors=True)


def test_a_users_node_pulls_the_sifs_the_site_pushed(hpc_user, shared_cache, apptainer_env, docker_client, tmp_path):
    """#25: the site pushes the toy's images with Apptainer (their SIFs as oras:// artifacts, from the cache it
    filled); the user, with no Docker and an empty cache of their own, runs from the pin file: every SIF pulled, none
    converted, all theirs."""
    from tests.services import registry

    site = tmp_path / "site"
    shutil.copytree(TOY, site / "toy", ignore=shutil.ignore_patterns("data", ".itwin-run"))
    (tmp_path / "registry").mkdir()
    with registry(tmp_path / "registry") as addr:
        res = itwin("build", "--engine", "apptainer", "--push", "--registry", f"{addr}/toy", "workflow.yml",
                    cwd=site / "toy", env={**apptainer_env, SIF_CACHE: str(shared_cache), "ITWIN_RUN_WHEELHOUSE": "none"})
        assert res.returncode == 0, res.stderr[-2000:]
        project = hpc_user.project(site / "toy", "hpc-pins")
        cache = hpc_user.home / ".cache" / "itwin-run" / "sif"
        shutil.rmtree(cache, ignore_errors=True)
        env = {"PATH": f"/tmp/applab/bin:{hpc_user.bin}:/usr/bin:/bin"}  # their own cache: ~/.cache/itwin-run
        res = hpc_user.itwin("--engine", "apptainer", "--images", "workflow.images.json", "workflow.yml", cwd=project,
                             env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("pulled ") == 3 and "converted " not in res.stderr, res.stderr[-3000:]
    uid = pwd.getpwnam(hpc_user.name).pw_uid
    assert len(list(cache.glob("*.sif"))) == 3 and owners(cache) == {uid}
    assert owners(project / "data") == {uid}
    assert (project / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\n")
