"""`itwin-run crate` (no daemon: a run of the fake engine gives the manifest; the real engines' crates are checked in
test_surrogate): the Provenance Run Crate validates at REQUIRED severity, reads back with rocrate, keeps retries as
their own actions, and copies the data only when asked."""

from __future__ import annotations

import json
import zipfile

from tests.conftest import itwin
from tests.fakes import FakeRunner
from tests.test_session import last_manifest, project, run  # noqa: F401  (project is a fixture)


def fails_once():
    calls = []

    def act(job) -> int:
        calls.append(job.step)
        return 3 if len(calls) == 1 else 0
    return act


def test_a_run_as_a_provenance_run_crate(project, tmp_path, validate_crate):  # noqa: F811
    run(project, FakeRunner({"two": fails_once()}), retries=1)
    m = last_manifest(project)
    res = itwin("crate", "-o", str(tmp_path / "crate"), cwd=project)
    assert res.returncode == 0, res.stderr
    assert "3 steps, 4 container runs" in res.stderr
    verdict = validate_crate(tmp_path / "crate")
    assert verdict["passed"] and verdict["statistics"]["total_failed_checks"] == 0, verdict.get("issues")
    assert verdict["statistics"]["total_skipped_checks"] == 0

    from rocrate.rocrate import ROCrate

    crate = ROCrate(tmp_path / "crate")
    assert crate.mainEntity.id == "chain.yml"
    actions = {e.id: e for e in crate.get_entities() if e.type == "CreateAction"}
    assert set(actions) == {f"#run-{m['run_id']}", "#action-one", "#action-two-attempt1", "#action-two-attempt2",
                            "#action-three"}
    first, second = actions["#action-two-attempt1"], actions["#action-two-attempt2"]
    assert (first["actionStatus"], first["exitCode"]) == ("FailedActionStatus", 3)
    assert (second["actionStatus"], second["exitCode"]) == ("CompletedActionStatus", 0)
    assert second["containerImage"]["name"].startswith("fake/") and second["instrument"].id == "#tool-two"
    assert [d.id for d in second["object"]][0] == (project / "data" / "a").as_uri() + "/"
    steps = [e.id for e in crate.mainEntity["step"]]
    assert steps == ["#step-one", "#step-two", "#step-three"]


def test_data_by_reference_or_copied_into_a_zip(project, tmp_path):  # noqa: F811
    run(project, FakeRunner({"one": lambda job: (project / "data/a/x.txt").write_text("hello") and 0}))
    assert itwin("crate", "-o", str(tmp_path / "ref.zip"), cwd=project).returncode == 0
    res = itwin("crate", "--include-data", "-o", str(tmp_path / "full.zip"), cwd=project)
    assert res.returncode == 0, res.stderr
    with zipfile.ZipFile(tmp_path / "full.zip") as z:
        assert z.read("data/a/x.txt") == b"hello"
        meta = json.loads(z.read("ro-crate-metadata.json"))
    x = next(e for e in meta["@graph"] if e["@id"] == "data/a/x.txt")
    assert x["contentSize"] == "5" and x["sha256"].startswith("2cf24dba")
    with zipfile.ZipFile(tmp_path / "ref.zip") as z:
        assert "data/a/x.txt" not in z.namelist()
    again = itwin("crate", "-o", str(tmp_path / "ref.zip"), cwd=project)
    assert again.returncode == 0  # a zip is replaced; a folder that is not empty is refused
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    refused = itwin("crate", "-o", str(tmp_path / "full"), cwd=project)
    assert refused.returncode == 2 and "not empty" in refused.stderr and (tmp_path / "full/mine.txt").exists()
