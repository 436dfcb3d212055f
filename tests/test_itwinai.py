"""itwinai on the host: config parsing, run lookup, unsupported types, bad checkpoints (real MLflow, sqlite store)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from itwinai.cli import main as itwinai_main
from itwinai.config import ItwinaiError, flatten, load_mlops
from itwinai.predict import find_run, load_model, predict
from itwinai.tracking import normalise, tracking_uri
from itwinai.train import lightning_config

from tests.conftest import REPO
from tests.services import start_mlflow_server

MNIST = REPO / "use-cases" / "mnist"


def test_mnist_config_parses_as_the_prototype_wrote_it(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_mlops(MNIST / "mnist-ai.yml")
    assert cfg.train_type == "lightning" and cfg.train_path == Path("./use-cases/mnist/pl-training.yml")
    assert cfg.experiment_name == "MNIST classification lite"
    assert cfg.inference["ckpt_path"] == "model/checkpoints/best-checkpoint/best-checkpoint.ckpt"
    conf = lightning_config(cfg, "/data/in", {"max_epochs": 2, "accelerator": None})
    assert conf["model"]["init_args"]["data_dir"] == "/data/in"
    assert conf["trainer"]["max_epochs"] == 2 and conf["trainer"]["accelerator"] == "auto"
    assert conf["optimizer"]["class_path"] == "torch.optim.AdamW"
    flat = flatten(conf)
    assert flat["model.init_args.hidden_size"] == "64" and flat["trainer.callbacks.0.init_args.monitor"] == "val_loss"


def test_tf_is_not_supported(tmp_path, capsys):
    cfg = tmp_path / "ai.yml"
    cfg.write_text("train: {type: tf, path: x.yml}\n")
    assert itwinai_main(["train", "--config", str(cfg), "--output", str(tmp_path / "out")]) == 2
    assert "train.type: 'tf' is not supported; only 'lightning' is" in capsys.readouterr().err


def test_tracking_uri_defaults_and_prototype_file_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y.db")
    assert tracking_uri(None, tmp_path) == "sqlite:////x/y.db"
    monkeypatch.chdir(tmp_path)
    assert normalise("file:./ml-logs") == f"sqlite:///{tmp_path}/ml-logs/mlflow.db"


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MlflowClient(uri), uri


def test_latest_means_newest_finished_run(store, capsys):
    client, _ = store
    exp = client.create_experiment("exp")
    old = client.create_run(exp)
    client.set_terminated(old.info.run_id, "FINISHED")
    time.sleep(0.01)
    new = client.create_run(exp)
    client.set_terminated(new.info.run_id, "FINISHED")
    time.sleep(0.01)
    failed = client.create_run(exp)
    client.set_terminated(failed.info.run_id, "FAILED")
    assert find_run(client, "exp", "latest") == new.info.run_id
    assert find_run(client, "exp", None) == new.info.run_id
    assert "using the newest finished run" in capsys.readouterr().out
    assert find_run(client, "exp", old.info.run_id) == old.info.run_id
    with pytest.raises(ItwinaiError, match="no experiment 'nope'"):
        find_run(client, "nope", "latest")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    conf = {"model": {"class_path": "itwinai.plmodels.mnist.LitMNIST", "init_args": {"hidden_size": 8}}}
    with pytest.raises(ItwinaiError, match="checkpoint best.ckpt is unreadable"):
        load_model(ckpt, conf, str(tmp_path))
    with pytest.raises(ItwinaiError, match="cannot import model class nowhere.Model"):
        load_model(ckpt, {"model": {"class_path": "nowhere.Model"}}, str(tmp_path))


def test_missing_checkpoint_artifact_is_a_clear_error(tmp_path, store):
    import numpy as np

    client, uri = store
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id, "FINISHED")
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "test.npz", x=np.zeros((2, 28, 28), np.float32), y=np.zeros(2, np.int64))
    cfg = tmp_path / "ai.yml"
    cfg.write_text(yaml.safe_dump({"train": {"type": "lightning", "path": "x"}, "logger": {"experiment_name": "exp"},
                                   "inference": {"type": "lightning", "run_id": "latest"}}))
    with pytest.raises(ItwinaiError, match=f"run {run.info.run_id}: cannot download model/checkpoints"):
        predict(load_mlops(cfg), [str(data)], str(tmp_path / "out"), uri)


def learnable_splits(data: Path) -> Path:
    """Small MNIST-shaped train/val/test splits a model can learn (an image's mean is its label)."""
    import numpy as np

    rng = np.random.default_rng(0)
    data.mkdir()
    for split, n in (("train", 256), ("val", 64), ("test", 64)):
        y = rng.integers(0, 10, n)
        x = rng.normal(size=(n, 28, 28)).astype(np.float32) + y[:, None, None]
        np.savez(data / f"{split}.npz", x=x, y=y)
    return data


def test_two_devices_on_one_machine_make_one_run_and_one_model_version(tmp_path):
    """`devices: 2` (Lightning starts the second process itself, with LOCAL_RANK=1): rank 0 alone tracks, so the
    store holds one finished run and one model version (each process believed it was rank 0 before)."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    data = learnable_splits(tmp_path / "data")
    conf = yaml.safe_load((MNIST / "pl-training.yml").read_text())
    conf["trainer"].update(devices=2, accelerator="cpu", strategy="ddp", max_epochs=1)
    (tmp_path / "pl.yml").write_text(yaml.safe_dump(conf))
    ai = yaml.safe_load((MNIST / "mnist-ai.yml").read_text())
    ai["train"]["path"] = str(tmp_path / "pl.yml")
    (tmp_path / "ai.yml").write_text(yaml.safe_dump(ai))
    itwinai = str(Path(sys.executable).parent / "itwinai")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the store is the output
    res = subprocess.run([itwinai, "train", "--config", str(tmp_path / "ai.yml"), "--input", str(data), "--output",
                          str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1 of world size 2 trained" in res.stdout and "rank 0 of world size 2 trained" in res.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert [str(v.version) for v in client.search_model_versions()] == ["1"]
    import tempfile

    assert not any(Path(tempfile.gettempdir()).glob("itwinai-rank1-*.db")), "a rank's scratch store is left behind"


def test_training_logs_to_a_real_mlflow_server(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at `mlflow server`: params, metrics, artifacts and the model version land there."""
    import json
    import os
    import urllib.request

    from mlflow.tracking import MlflowClient

    data = learnable_splits(tmp_path / "data")
    uri, server = start_mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path, tmp_path / "server-artifacts")
    try:
        monkeypatch.chdir(REPO)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert itwinai_main(["train", "--config", str(MNIST / "mnist-ai.yml"), "--input", str(data),
                             "--max-epochs", "1", "--accelerator", "cpu"]) == 0
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("MNIST classification lite")
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED" and "val_acc" in run.data.metrics
        assert run.data.params["model.init_args.data_dir"] == str(data)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"pl-training.yml", "model"} <= names
        assert list((tmp_path / "server-artifacts").rglob("best-checkpoint.ckpt"))  # stored by the server
        got = json.load(urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/get?name=MNIST-clf-lite"))
        assert got["registered_model"]["latest_versions"][0]["run_id"] == run.info.run_id
        assert not os.path.exists(REPO / "mlruns")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
