"""The second use case (use-cases/surrogate: its own package, LightningModule and LightningDataModule) end to end in
containers: simulate, train, register with an alias, predict by `models:/NAME@ALIAS` in a fresh container, classical
and --cwl. The error bound is the one its README states."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, itwin
from tests.test_mnist import wheelhouse

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("surrogate")]  # one project
RMSE_BOUND = 0.03  # use-cases/surrogate/README.md: held-out RMSE of the shipped config (responses span about ±2)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("surrogate")
    root.chmod(0o755)
    shutil.copytree(REPO / "use-cases" / "surrogate", root / "use-cases" / "surrogate",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__",
                                                                                      "build"))
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def run(project: Path, *args: str) -> str:
    res = itwin(*args, cwd=project, env={"ITWIN_RUN_WHEELHOUSE": wheelhouse()}, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    return res.stdout


def test_trains_registers_and_predicts_by_alias(project, docker_client):
    from mlflow.tracking import MlflowClient

    out = run(project, "use-cases/surrogate/training-workflow.yml")
    run_id = out.split("itwinai: run_id=")[1].split()[0]
    uri = f"sqlite:///{project}/data/surrogate/logs/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("oscillator-surrogate", "champion")
    assert (str(version.version), version.run_id) == ("1", run_id)
    run_ = client.get_run(run_id)
    assert run_.info.status == "FINISHED" and run_.data.metrics["test_rmse"] < RMSE_BOUND
    assert run_.data.params["data.init_args.data_dir"] == str(project / "data/surrogate/simulations")
    assert "prediction-vs-truth.png" in {a.path for a in client.list_artifacts(run_id)}  # logged to MLflow
    assert (project / "data/surrogate/logs/checkpoints/last.ckpt").is_file()

    out = run(project, "use-cases/surrogate/inference-workflow.yml")
    assert "with models:/oscillator-surrogate@champion" in out
    pred = project / "data/surrogate/predictions"
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["run_id"] == run_id and summary["samples"] == 2000
    assert summary["rmse"] < RMSE_BOUND, summary
    assert np.load(pred / "predictions.npy").shape == (2000, 32)
    assert png_size(pred / "prediction-vs-truth.png") == (500, 500)
    held = np.load(project / "data/surrogate/held-out/test.npz")  # held out: another seed than training's
    train = np.load(project / "data/surrogate/simulations/train.npz")
    assert not {tuple(r) for r in held["x"]} & {tuple(r) for r in train["x"]}


def test_the_same_workflows_in_cwl_mode(project, docker_client):
    """--cwl: cwltool runs workflow.cwl and inference.cwl in the same step images; the store is staged elsewhere
    in the container than on the host, and the model is still found; the datasets stay readable for classical
    steps and hold no caches (cwltool makes the output directory HOME)."""
    out = run(project, "--cwl", "--force", "use-cases/surrogate/training-workflow.yml")
    assert "registered model 'oscillator-surrogate'" in out
    out = run(project, "--cwl", "--force", "use-cases/surrogate/inference-workflow.yml")
    summary = json.loads((project / "data/surrogate/predictions/summary.json").read_text())
    assert summary["rmse"] < RMSE_BOUND and summary["samples"] == 2000
    for name in ("simulations", "logs", "held-out", "predictions"):
        dataset = project / "data/surrogate" / name
        assert dataset.stat().st_mode & 0o755 == 0o755, name
        assert not {".cache", ".config"} & {p.name for p in dataset.iterdir()}, name
    run(project, "use-cases/surrogate/inference-workflow.yml")  # classical steps read what cwltool wrote


def test_a_sweep_trains_its_points_two_at_a_time_and_serves_the_best(project, docker_client, tmp_path,
                                                                     validate_crate):
    """sweep-workflow.yml, smaller: every point a child run of one `train` run in one store; the best by val_loss
    linked as sweep/best and holding the alias the predict step serves; adding a value runs only the new points;
    a rerun with nothing changed runs nothing. The first run's RO-Crate validates, each point its own action."""
    from mlflow.tracking import MlflowClient

    wf = project / "use-cases/surrogate/sweep-workflow.yml"
    text = wf.read_text()
    small = text.replace("max-epochs: 10", "max-epochs: 3").replace("[0.0005, 0.002]", "[0.002]")
    assert small != text
    wf.write_text(small)
    run(project, "--jobs", "2", str(wf.relative_to(project)))
    record = json.loads(sorted((project / ".itwin-run/runs").glob("*/manifest.json"))[-1].read_text())
    points = [record["steps"][f"train.hidden_size-{h}_learning_rate-0.002"] for h in (32, 128)]
    assert points[0]["start"] < points[1]["end"] and points[1]["start"] < points[0]["end"]  # side by side
    # two at a time: each trains on half the CPUs' threads (or the test worker's share, tests/conftest.py)
    share = int(os.environ.get("ITWIN_RUN_THREADS") or max(1, len(os.sched_getaffinity(0)) // 2))
    for point in points:
        assert f"itwinai: {share} CPU thread(s)" in Path(point["log"]).read_text()
    res = itwin("crate", "-o", str(tmp_path / "crate"), cwd=project)
    assert res.returncode == 0, res.stderr
    verdict = validate_crate(tmp_path / "crate")
    assert verdict["passed"] and verdict["statistics"]["total_failed_checks"] == 0, verdict.get("issues")
    graph = {e["@id"]: e for e in json.loads((tmp_path / "crate/ro-crate-metadata.json").read_text())["@graph"]}
    for h in (32, 128):
        action = graph[f"#action-train.hidden_size-{h}_learning_rate-0.002"]
        assert action["instrument"] == {"@id": "#tool-train"} and action["identifier"].startswith("mlflow:runs/")
        assert action["about"].startswith("models:/oscillator-surrogate/")
        image = graph[action["containerImage"]["@id"]]
        assert image["name"].startswith("itwin-run/itwinai-env") and len(image["sha256"]) == 64

    wf.write_text(small.replace("[0.002]", "[0.002, 0.0005]"))
    res = itwin("--jobs", "2", str(wf.relative_to(project)), cwd=project,
                env={"ITWIN_RUN_WHEELHOUSE": wheelhouse()}, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    ran = sorted(line.split(":")[0].removeprefix("run ") for line in res.stderr.splitlines() if line.startswith("run "))
    assert ran == ["predict", "train.hidden_size-128_learning_rate-0.0005", "train.hidden_size-32_learning_rate-0.0005"]

    sweep = project / "data/surrogate/sweep"
    table = json.loads((sweep / "sweep.json").read_text())
    losses = {p["point"]: p["val_loss"] for p in table["points"]}
    assert len(losses) == 4 and table["best"] == min(losses, key=losses.get)
    assert (sweep / "best").resolve() == sweep / table["best"]
    uri = f"sqlite:///{sweep}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("oscillator surrogate")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_name == "train"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parent) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent[0].info.run_id}
    assert {c.info.run_name: c.data.metrics["val_loss"] for c in children} == pytest.approx(losses)
    assert {c.data.params["model.init_args.hidden_size"] for c in children} == {"32", "128"}
    champion = client.get_model_version_by_alias("oscillator-surrogate", "champion")
    assert client.get_run(champion.run_id).info.run_name == table["best"]
    summary = json.loads((project / "data/surrogate/sweep-predictions/summary.json").read_text())
    assert summary["run_id"] == champion.run_id

    res = itwin("--jobs", "2", str(wf.relative_to(project)), cwd=project, env={"ITWIN_RUN_WHEELHOUSE": wheelhouse()})
    assert res.returncode == 0 and not [line for line in res.stderr.splitlines() if line.startswith("run ")]
