"""What another process does to Docker's images while itwin-run works, each with a stand-in for Docker's API (the
races cannot be made to happen on demand against a real daemon): a build whose cached parent layer is removed under
it (another build's clean-up, a `docker image prune`) is built once more, any other build error is reported at once;
`build --save` of an image removed since it was made is one line, and Apptainer's saves the SIF it has. And
who converts a local image to a SIF by `docker export`, and whose builds a served wheelhouse reaches."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest

from runner.engines.apptainer import ApptainerBuilder
from runner.engines.docker import DockerBuilder
from runner.errors import UserError

LOST = ("failed to export image: failed to set parent sha256:1d10aa: unknown parent image ID "
        "sha256:1d10aa")
OK = [{"stream": "Step 1/2 : FROM itwin-run/base:x\n"}, {"stream": " ---> 1d10aa1d10aa\n"},
      {"stream": "Step 2/2 : COPY req.txt /\n"}, {"stream": " ---> 2e20bb2e20bb\n"}]


class Api:
    def __init__(self, *streams: list[dict]):
        self.streams = list(streams)
        self.builds = 0

    def build(self, **_):
        self.builds += 1
        return iter(self.streams.pop(0))

    def inspect_image(self, image: str) -> dict:
        return {"RepoTags": ["itwin-run/t:1"] if image == "2e20bb2e20bb" else []}

    def remove_image(self, image: str, noprune: bool) -> None:
        pass


class Builder(DockerBuilder):
    def __init__(self, api: Api):
        super().__init__()
        self.fake = SimpleNamespace(api=api)

    @property
    def client(self):
        return self.fake


def test_a_build_that_lost_its_cached_parent_is_built_again(capsys):
    api = Api(OK[:2] + [{"error": LOST}], OK)
    Builder(api)._build("/ctx", "Dockerfile", "itwin-run/t:1", {}, step="t")
    assert api.builds == 2
    err = capsys.readouterr().err
    assert "a cached layer was removed during the build; building again" in err and "built" in err


def test_other_build_errors_and_a_second_loss_are_not_retried():
    api = Api(OK[:2] + [{"error": "The command '/bin/sh -c pip install nope' returned a non-zero code: 1"}])
    with pytest.raises(UserError, match="non-zero code"):
        Builder(api)._build("/ctx", "Dockerfile", "itwin-run/t:1", {}, step="t")
    assert api.builds == 1
    api = Api([{"error": LOST}], [{"error": LOST}])
    with pytest.raises(UserError, match="unknown parent image ID"):
        Builder(api)._build("/ctx", "Dockerfile", "itwin-run/t:1", {}, step="t")
    assert api.builds == 2


class Gone:
    def get(self, ref: str):
        raise docker.errors.ImageNotFound(f"No such image: {ref}")


def test_saving_an_image_removed_since_it_was_made_is_one_line(tmp_path):
    builder = Builder(Api())
    builder.fake.images = Gone()
    builder.base_image = lambda: ("itwin-run/base:x", "")
    builder._parent = lambda: ("itwin-run/parent:x", "")
    with pytest.raises(UserError, match=r"^itwin-run/parent:x: no longer in docker \(removed since it was made\): "
                                        r"build again$"):
        builder.save(["itwin-run/req:1"], tmp_path)


def test_apptainer_saves_the_sif_of_an_image_docker_no_longer_holds(tmp_path, monkeypatch, capsys):
    class Docker:
        saved: list[str] = []

        def identity(self, ref: str) -> str | None:
            return None if ref == "itwin-run/req:gone" else "sha256:1"

        def save(self, refs: list[str], dest: Path) -> list[Path]:
            self.saved += refs
            return []

    monkeypatch.setattr("runner.engines.apptainer.build.executable", lambda: "apptainer")
    builder, engine = ApptainerBuilder(), Docker()
    builder._docker = engine
    sifs = [tmp_path / "a.sif", tmp_path / "b.sif"]
    for sif in sifs:
        sif.write_bytes(b"SIF")
    builder._origin = {str(sifs[0]): "itwin-run/req:gone", str(sifs[1]): "itwin-run/other:here"}
    out = builder.save([str(s) for s in sifs], tmp_path / "saved")
    assert engine.saved == ["itwin-run/other:here"]
    assert sorted(p.name for p in out) == ["a.sif", "b.sif"]
    assert "note: itwin-run/req:gone is no longer in Docker: its SIF is saved, not the image" in capsys.readouterr().err


def test_who_converts_a_local_image_by_docker_export(monkeypatch):
    """Root converts an image of a known architecture itself, unless ITWIN_RUN_SIF_CONVERT=apptainer asks for
    Apptainer's own conversion; another user (who cannot keep the files' owners when unpacking) never does."""
    from runner.engines.apptainer import export

    monkeypatch.setattr(export, "mksquashfs", lambda: "/usr/bin/mksquashfs")
    monkeypatch.setattr(export.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(export.os, "geteuid", lambda: 0)
    monkeypatch.delenv("ITWIN_RUN_SIF_CONVERT", raising=False)
    assert export.converts_here({"Architecture": "amd64"}) and export.converts_here({"Architecture": "arm64"})
    assert not export.converts_here({"Architecture": "sparc"}) and not export.converts_here({})
    monkeypatch.setenv("ITWIN_RUN_SIF_CONVERT", "apptainer")
    assert not export.converts_here({"Architecture": "amd64"})
    monkeypatch.delenv("ITWIN_RUN_SIF_CONVERT")
    monkeypatch.setattr(export.os, "geteuid", lambda: 1000)
    assert not export.converts_here({"Architecture": "amd64"})


def test_a_wheelhouse_is_served_only_where_builds_reach_this_machines_loopback(tmp_path):
    """A build that cannot reach the served wheelhouse would take the packages from the index instead (a CUDA
    torch for the CPU wheel): a daemon elsewhere and rootless Docker (RootlessKit's network) are one clear error;
    a daemon here, and rootless Podman (the host's network), get the wheelhouse's listing."""
    import urllib.request

    from runner.engines.docker.wheels import served

    (tmp_path / "probe-1.0-py3-none-any.whl").write_bytes(b"wheel")

    def api(url: str = "http+docker://localhost", options: tuple = (), engine: str = "Engine"):
        return SimpleNamespace(base_url=url, info=lambda: {"SecurityOptions": ["name=seccomp", *options]},
                               version=lambda: {"Components": [{"Name": engine}]})

    for daemon, why in ((api("http://10.0.0.1:2375"), "not on this machine (http://10.0.0.1:2375)"),
                        (api(options=("name=rootless",)), "rootless Docker builds on a network of their own")):
        with pytest.raises(UserError, match=r"reaches builds only on this machine's network, and .*--wheelhouse none") as err:
            with served(tmp_path, daemon):
                pass
        assert why in str(err.value)
    for daemon in (api(), api(options=("name=rootless",), engine="Podman Engine")):
        with served(tmp_path, daemon) as url:
            assert "probe-1.0-py3-none-any.whl" in urllib.request.urlopen(url, timeout=10).read().decode()
