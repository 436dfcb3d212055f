"""A Docker build whose cached parent layer is removed under it (another build's clean-up, a `docker image prune`)
is built once more; any other build error is reported at once. Docker's API is a stand-in here: the race itself
cannot be made to happen on demand against a real daemon."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
