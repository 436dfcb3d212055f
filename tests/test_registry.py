"""Prebuilt images against a real registry (CNCF Distribution, Debian's docker-registry) on 127.0.0.1, and image
archives for sites with no registry at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LABEL, itwin, set_word, source_project
from tests.services import change_packages
from tests.services import registry as serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("registry")]  # one registry


@pytest.fixture
def toy(toy: Path) -> Path:
    """The toy with step images of its own (a new pin in each env file): these tests remove their images from the
    daemon, and other workers may be running the toy's usual ones."""
    stamp = time.time_ns()
    change_packages(toy / "envs" / "requirements.txt", stamp)
    change_packages(toy / "envs" / "environment.yml", stamp)
    dockerfile = toy / "envs" / "summarize" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"LABEL org.itwin-run.test={stamp}\n")
    return toy


def words() -> tuple[str, str]:
    """Source words of this test's own (source_project): these tests remove their images from the daemon, and other
    workers' tests may be running the images of the usual words."""
    stamp = time.time_ns()
    return f"first{stamp}", f"second{stamp}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, docker_client):
    with serve_registry(tmp_path_factory.mktemp("registry")) as addr:
        yield addr


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def drop_local(client, refs) -> None:
    """Remove these images from the daemon, every name they have, and prove they are gone."""
    import docker

    refs = list(refs)
    for ref in refs:
        try:
            tags = client.images.get(ref).tags
        except docker.errors.ImageNotFound:  # another name of an image removed already (the same content)
            continue
        for name in {ref.split("@")[0], *tags}:
            try:
                client.images.remove(name, force=True)
            except docker.errors.ImageNotFound:  # went with a name removed before it
                pass
    assert_gone(client, refs)


def assert_gone(client, refs) -> None:
    import docker

    for ref in refs:
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(ref)


@pytest.fixture
def pushed(toy, registry, docker_client):
    res = itwin("build", "workflow.yml", "--push", "--registry", f"{registry}/toy", cwd=toy)
    assert res.returncode == 0, res.stderr
    lock = json.loads((toy / "workflow.images.json").read_text())["images"]
    assert set(lock) == {"generate", "square", "summarize"}
    assert all(ref.startswith(f"{registry}/toy/") and "@sha256:" in ref for ref in lock.values())
    assert "pushed" in res.stderr
    return lock


def test_push_then_run_pulling_everything_back(toy, pushed, docker_client, no_leftovers):
    classical = itwin("workflow.yml", cwd=toy)
    assert classical.returncode == 0
    want = outputs(toy / "data")
    shutil.rmtree(toy / "data")
    drop_local(docker_client, pushed.values())
    res = itwin("--images", "workflow.images.json", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("pulled ") == 3
    assert outputs(toy / "data") == want
    # pulled by digest, so untagged: `images` names them by digest, as the records do, and prune keeps them
    listed = {line.split()[1]: line for line in itwin("images", cwd=toy).stdout.splitlines()[1:]}
    for step, ref in pushed.items():
        name, digest = ref.split("@")
        assert f"workflow.yml/{step}" in listed[f"{name.rsplit(':', 1)[0]}@{digest}"]
    dry = itwin("prune", "--dry-run", cwd=toy).stdout
    kept = [f"{name.rsplit(':', 1)[0]}@{digest}" for name, digest in (ref.split("@") for ref in pushed.values())]
    assert not any(f" {ref} " in dry for ref in kept), dry  # (the same content pulled from elsewhere may go)


def test_apptainer_pulls_from_the_registry(toy, pushed, apptainer_env, tmp_path, no_leftovers):
    env = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "sif")}
    res = itwin("--engine", "apptainer", "--images", "workflow.images.json", "workflow.yml", cwd=toy, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("converted ") == 3 and len(list((tmp_path / "sif").glob("*.sif"))) == 3
    assert (toy / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\nmarker=from the Dockerfile env")


def test_pinned_sources_reach_apptainer_as_an_overlay(registry, docker_client, apptainer_env, tmp_path,
                                                      no_leftovers):
    """`build --push` of a step with sources pins its dependency image and its sources' wheels beside the whole
    image. A node that pulls (Apptainer) converts the dependencies once; after a source edit and a new push it
    pulls only the wheels and makes an overlay. Docker pulls the whole image, as before."""
    one, two = words()
    source_project(tmp_path, one)
    cache = tmp_path / "sif"
    node = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(cache)}

    def push() -> dict:
        res = itwin("build", "wf.yml", "--push", "--registry", f"{registry}/src", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        pins = json.loads((tmp_path / "wf.images.json").read_text())
        layers = pins["layers"]["say"]
        assert all("@sha256:" in ref for ref in [pins["images"]["say"], *layers.values()])
        return pins

    first = push()
    assert not [i for i in docker_client.images.list(filters={"label": LABEL}) if any("-wheels" in t for t in i.tags)]
    res = itwin("--engine", "apptainer", "--images", "wf.images.json", "wf.yml", cwd=tmp_path, env=node)
    assert res.returncode == 0 and f"say | script {one}" in res.stdout, res.stderr[-2000:]
    assert res.stderr.count("converted ") == 1 and res.stderr.count("overlay ") == 1
    (deps,) = cache.glob("*.sif")
    made = deps.stat().st_mtime_ns

    set_word(tmp_path, two)
    second = push()
    assert second["layers"]["say"]["dependencies"] == first["layers"]["say"]["dependencies"]
    assert second["layers"]["say"]["wheels"] != first["layers"]["say"]["wheels"]
    res = itwin("--engine", "apptainer", "--images", "wf.images.json", "wf.yml", cwd=tmp_path, env=node)
    assert res.returncode == 0 and f"say | script {two}" in res.stdout, res.stderr[-2000:]
    assert "converted " not in res.stderr and res.stderr.count("overlay ") == 1
    assert [p.stat().st_mtime_ns for p in cache.glob("*.sif")] == [made]
    assert (tmp_path / "data/out/word.txt").read_text() == f"{two}\n"

    drop_local(docker_client, [second["images"]["say"]])
    res = itwin("--images", "wf.images.json", "--force", "wf.yml", cwd=tmp_path)
    assert res.returncode == 0 and f"say | script {two}" in res.stdout, res.stderr[-2000:]


def test_sifs_go_through_the_registry_and_a_node_converts_nothing(toy, registry, docker_client, apptainer_env,
                                                                   tmp_path, no_leftovers):
    """#25: `build --push --engine apptainer` pushes the SIFs too, as oras:// artifacts, and the pin file names
    them; a node with no Docker daemon pulls them into its cache and converts nothing. Apptainer itself pulls what
    itwin-run pushed."""
    site = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "site-sif")}
    res = itwin("build", "--engine", "apptainer", "workflow.yml", "--push", "--registry", f"{registry}/toy", cwd=toy,
                env=site)
    assert res.returncode == 0, res.stderr[-2000:]
    sifs = json.loads((toy / "workflow.images.json").read_text())["sifs"]
    assert set(sifs) == {"generate", "square", "summarize"}, sifs
    assert all(p["sif"].startswith(f"oras://{registry}/toy/") and "-sif@sha256:" in p["sif"] for p in sifs.values())
    node = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "node-sif"), "DOCKER_HOST": "unix:///nonexistent"}
    res = itwin("--engine", "apptainer", "--images", "workflow.images.json", "workflow.yml", cwd=toy, env=node)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("pulled ") == 3 and "converted " not in res.stderr, res.stderr[-2000:]
    assert (toy / "data" / "summary" / "summary.txt").read_text().startswith("sum=55\nmarker=from the Dockerfile env")
    again = itwin("--engine", "apptainer", "--images", "workflow.images.json", "workflow.yml", cwd=toy, env=node)
    assert again.returncode == 0 and "pulled " not in again.stderr and again.stderr.count("up to date") >= 3
    tagged = sifs["generate"]["sif"].split("@")[0]
    pulled = subprocess.run(["apptainer", "pull", "--no-https", str(tmp_path / "own.sif"), tagged], env=node,
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    ran = subprocess.run(["apptainer", "exec", str(tmp_path / "own.sif"), "python", "-c", "print('inside')"],
                         env=node, capture_output=True, text=True)
    assert ran.stdout == "inside\n", ran.stderr[-2000:]


def test_a_pushed_source_overlay_is_pulled_not_made(registry, docker_client, apptainer_env, tmp_path, no_leftovers):
    """A step with sources: its dependency SIF and its source overlay go as two artifacts, and a node pulls both
    (kilobytes for the overlay once the dependencies are there) instead of converting and installing."""
    one, _ = words()
    source_project(tmp_path, one)
    site = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "site-sif")}
    res = itwin("build", "--engine", "apptainer", "wf.yml", "--push", "--registry", f"{registry}/src", cwd=tmp_path,
                env=site)
    assert res.returncode == 0, res.stderr[-2000:]
    pin = json.loads((tmp_path / "wf.images.json").read_text())["sifs"]["say"]
    assert "-sif@sha256:" in pin["sif"] and "-sqfs@sha256:" in pin["overlay"], pin
    node = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "node-sif"), "DOCKER_HOST": "unix:///nonexistent"}
    res = itwin("--engine", "apptainer", "--images", "wf.images.json", "wf.yml", cwd=tmp_path, env=node)
    assert res.returncode == 0 and f"say | script {one}" in res.stdout, res.stderr[-2000:]
    assert res.stderr.count("pulled ") == 2 and "converted " not in res.stderr and "overlay " not in res.stderr
    assert sorted(p.suffix for p in (tmp_path / "node-sif").iterdir() if not p.name.startswith(".")) == [".sif",
                                                                                                         ".sqfs"]


def test_pull_never_with_a_missing_image_fails_fast(toy, pushed, docker_client):
    drop_local(docker_client, pushed.values())
    res = itwin("--pull", "never", "--images", "workflow.images.json", "workflow.yml", cwd=toy)
    assert res.returncode == 3
    assert_gone(docker_client, pushed.values())  # nothing was pulled
    assert "is not present locally and --pull never forbids pulling it" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_image_and_unreachable_registry_are_clear(toy, registry, docker_client):
    wf = toy / "workflow.yml"
    text = wf.read_text()
    wf.write_text(text.replace("env: {file: ./envs/requirements.txt}", f"env: {{image: {registry}/toy/nope:1}}"))
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 3 and "cannot pull" in res.stderr and "no such image in the registry" in res.stderr
    wf.write_text(text.replace("env: {file: ./envs/requirements.txt}", "env: {image: 127.0.0.1:1/toy/nope:1}"))
    res = itwin("workflow.yml", cwd=toy)
    assert res.returncode == 3 and "the registry is unreachable" in res.stderr
    assert "Traceback" not in res.stderr


def test_save_and_load_for_sites_without_a_registry(toy, docker_client, apptainer_env, tmp_path, no_leftovers):
    archive = tmp_path / "carry"
    res = itwin("build", "workflow.yml", "--save", str(archive), "--engine", "apptainer", cwd=toy, env=apptainer_env)
    assert res.returncode == 0, res.stderr
    images = json.loads((archive / "images.json").read_text())["images"]
    assert len(list(archive.glob("*.tar"))) == 5  # parent, base and the three step images
    assert len(list((archive / "sif").glob("*.sif"))) == 3
    # Docker: the step images are gone, loading the archives brings them back, and the run pulls nothing
    drop_local(docker_client, set(images.values()))
    res = itwin("load", str(archive), cwd=toy)
    assert res.returncode == 0, res.stderr
    assert all(docker_client.images.get(ref) for ref in images.values())  # load brought each one back
    res = itwin("--pull", "never", "workflow.yml", cwd=toy)
    assert res.returncode == 0, res.stderr
    assert "built" not in res.stderr
    shutil.rmtree(toy / "data")
    # Apptainer on a node with no Docker daemon: the SIFs, loaded into an empty cache, are found by what they hold
    env = {**apptainer_env, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "node-cache"), "DOCKER_HOST": "unix:///nonexistent"}
    res = itwin("load", str(archive), "--engine", "apptainer", cwd=toy, env=env)
    assert res.returncode == 0, res.stderr
    res = itwin("--engine", "apptainer", "workflow.yml", cwd=toy, env=env)
    assert res.returncode == 0, res.stderr
    assert (toy / "data" / "summary" / "summary.txt").read_text().startswith("sum=55")


def test_registry_that_asks_for_credentials(toy, docker_client, tmp_path, apptainer_env, no_leftovers):
    import base64

    root = tmp_path / "authreg"
    root.mkdir()
    with serve_registry(root, "itwin", "s3cret-pw") as addr:
        creds = {"ITWIN_RUN_REGISTRY_USER": "itwin", "ITWIN_RUN_REGISTRY_PASSWORD": "s3cret-pw"}
        res = itwin("build", "workflow.yml", "--push", "--registry", f"{addr}/toy", cwd=toy)
        assert res.returncode == 3 and "the registry asks for credentials" in res.stderr
        res = itwin("build", "workflow.yml", "--push", "--registry", f"{addr}/toy", cwd=toy, env=creds)  # from env
        assert res.returncode == 0, res.stderr
        lock = json.loads((toy / "workflow.images.json").read_text())["images"]
        drop_local(docker_client, lock.values())
        res = itwin("--images", "workflow.images.json", "workflow.yml", cwd=toy, env={"DOCKER_CONFIG": str(tmp_path)})
        assert res.returncode == 3 and "the registry asks for credentials: `docker login`" in res.stderr
        auth = base64.b64encode(b"itwin:s3cret-pw").decode()  # what `docker login` writes
        (tmp_path / "config.json").write_text(json.dumps({"auths": {addr: {"auth": auth}}}))
        res = itwin("--images", "workflow.images.json", "workflow.yml", cwd=toy, env={"DOCKER_CONFIG": str(tmp_path)})
        assert res.returncode == 0, res.stderr
        res = itwin("--engine", "apptainer", "--images", "workflow.images.json", "workflow.yml", cwd=toy,
                    env={**apptainer_env, **creds, "ITWIN_RUN_SIF_CACHE": str(tmp_path / "sif")})
        assert res.returncode == 0, res.stderr[-2000:]
        logs = "".join(p.read_text(errors="replace") for p in (toy / ".itwin-run").rglob("*") if p.is_file())
        assert "s3cret-pw" not in logs + (toy / "workflow.images.json").read_text() + res.stdout + res.stderr
