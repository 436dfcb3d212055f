"""itwinai on the host: config parsing, run lookup, unsupported types, bad checkpoints (real MLflow, sqlite store)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from itwinai.cli import main as itwinai_main
from itwinai.config import ItwinaiError, flatten, load_mlops
from itwinai.predict import find_run, load_model, predict
from itwinai.tracking import normalise, tracking_uri
from itwinai.train import lightning_config

from tests.conftest import REPO, SHARED
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


def test_the_logged_signature_is_what_infer_signature_makes():
    """log_model builds the tensor signature itself (infer_signature imports scipy, which the training image lacks):
    the same schema as infer_signature's, for images and for vectors, any batch size."""
    import numpy as np
    from itwinai.registry import tensor_schema
    from mlflow.models import infer_signature

    for x, y in ((np.zeros((5, 1, 28, 28), np.float32), np.zeros((5, 10), np.float32)),
                 (np.zeros((3, 4), np.float64), np.zeros((3, 32), np.float32))):
        assert (tensor_schema(x), tensor_schema(y)) == (infer_signature(x, y).inputs, infer_signature(x, y).outputs)


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MlflowClient(uri), uri


def test_latest_means_newest_finished_run(store, capsys):
    client, _ = store
    exp = client.create_experiment("exp")
    with_model = {"itwinai.model_uri": "models:/m-1"}
    old = client.create_run(exp, tags=with_model)
    client.set_terminated(old.info.run_id, "FINISHED")
    time.sleep(0.01)
    new = client.create_run(exp, tags=with_model)
    client.set_terminated(new.info.run_id, "FINISHED")
    time.sleep(0.01)
    failed = client.create_run(exp, tags=with_model)
    client.set_terminated(failed.info.run_id, "FAILED")
    time.sleep(0.01)
    no_model = client.create_run(exp)  # finished, but no model was logged (training stopped before a checkpoint)
    client.set_terminated(no_model.info.run_id, "FINISHED")
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
                                   "inference": {"type": "lightning", "run_id": run.info.run_id}}))
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.mlflow
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


@pytest.fixture(scope="module")
def mnist_trained(tmp_path_factory):
    """LitMNIST trained on the host for one epoch: a store with a registered, aliased, loadable model."""
    root = tmp_path_factory.mktemp("trained")
    data = learnable_splits(root / "data")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run([str(Path(sys.executable).parent / "itwinai"), "train", "--config",
                          str(MNIST / "mnist-ai.yml"), "--input", str(data), "--output", str(root / "out"),
                          "--max-epochs", "2", "--accelerator", "cpu"], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "registered model 'MNIST-clf-lite' version 1 (alias 'champion'" in res.stdout
    return root, res.stdout.split("itwinai: run_id=")[1].split()[0]


def _predict_with(root: Path, inference: dict, name: str) -> dict:
    import json

    cfg = root / f"{name}.yml"
    cfg.write_text(yaml.safe_dump({"train": {"type": "lightning", "path": "unused.yml"},
                                   "logger": {"experiment_name": "MNIST classification lite"},
                                   "inference": {"type": "lightning", **inference}}))
    assert itwinai_main(["predict", "--config", str(cfg), "--input", str(root / "data"), "--input",
                         str(root / "out"), "--output", str(root / name)]) == 0
    return json.loads((root / name / "summary.json").read_text())


@pytest.mark.xdist_group("mnist_trained")  # one trained model (tests/test_suite_rules.py)
@pytest.mark.slow
@pytest.mark.parametrize("uri", ["models:/MNIST-clf-lite@champion", "models:/MNIST-clf-lite/1", "runs:/RUN/model",
                                 "latest"])
def test_predict_takes_every_kind_of_model_uri(mnist_trained, uri, monkeypatch):
    root, run_id = mnist_trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    inference = {"run_id": "latest"} if uri == "latest" else {"model_uri": uri.replace("RUN", run_id)}
    summary = _predict_with(root, inference, f"pred-{abs(hash(uri))}")
    assert summary["run_id"] == run_id and summary["samples"] == 64
    rows = (root / f"pred-{abs(hash(uri))}" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,predicted,probability,label" and len(rows) == 65
    pairs = [(int(r.split(",")[1]), int(r.split(",")[3])) for r in rows[1:]]
    assert summary["accuracy"] == pytest.approx(sum(p == y for p, y in pairs) / 64)  # the predictions' own


@pytest.mark.xdist_group("mnist_trained")  # one trained model (tests/test_suite_rules.py)
@pytest.mark.slow
def test_model_uri_errors_are_one_line(mnist_trained, monkeypatch):
    root, _ = mnist_trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri, words in (("s3://bucket/model", "is not models:/NAME/VERSION"),
                       ("models:/MNIST-clf-lite@nope", "inference.model_uri: models:/MNIST-clf-lite@nope")):
        cfg = root / "bad.yml"
        cfg.write_text(yaml.safe_dump({"train": {"path": "x"}, "inference": {"model_uri": uri}}))
        with pytest.raises(ItwinaiError, match=words):
            predict(load_mlops(cfg), [str(root / "data"), str(root / "out")], str(root / "bad"), None)


@pytest.mark.xdist_group("mnist_trained")  # one trained model (tests/test_suite_rules.py)
@pytest.mark.slow
def test_registered_model_loads_without_itwinai_installed(mnist_trained):
    """mlflow.pytorch.load_model in a plain Python: the model's package travels with it (code_paths), so a Python
    where itwinai is not importable loads and runs it."""
    root, _ = mnist_trained
    script = f"""
import os, sys
sys.path = [p for p in sys.path if not os.path.exists(os.path.join(p or ".", "itwinai"))]
try:
    import itwinai
    raise SystemExit("itwinai is importable: the test proves nothing")
except ImportError:
    pass
import mlflow, numpy as np, torch
mlflow.set_tracking_uri("sqlite:///{root}/out/mlflow.db")
model = mlflow.pytorch.load_model("models:/MNIST-clf-lite@champion")
d = np.load("{root}/data/test.npz")
pred = model(torch.from_numpy(d["x"].astype(np.float32))).argmax(1).numpy()
print("loaded", type(model).__module__, "predicted", *pred)
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loaded itwinai.plmodels.mnist predicted" in res.stdout
    plain = [int(c) for c in res.stdout.split("predicted")[1].split()]
    _predict_with(root, {"model_uri": "models:/MNIST-clf-lite@champion"}, "pred-plain")
    rows = (root / "pred-plain" / "predictions.csv").read_text().splitlines()[1:]
    assert plain == [int(r.split(",")[1]) for r in rows]  # the same model as itwinai predict's, batch for batch


@pytest.mark.slow
def test_resume_continues_the_run_from_last_ckpt(tmp_path, monkeypatch):
    """Stopped after epoch 1, resumed to 2 epochs: one run, both epochs in one metric history, the effective
    config (max_epochs 2) logged."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO)
    data = learnable_splits(tmp_path / "data")
    base = ["train", "--config", str(MNIST / "mnist-ai.yml"), "--input", str(data), "--output", str(tmp_path / "out"),
            "--accelerator", "cpu"]
    assert itwinai_main([*base, "--max-epochs", "1"]) == 0
    assert (tmp_path / "out/checkpoints/last.ckpt").is_file()
    assert itwinai_main([*base, "--max-epochs", "2", "--resume"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == 2 and history[0].step < history[1].step
    assert len(client.get_metric_history(run.info.run_id, "train_loss_epoch")) == 2
    conf = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "pl-training.yml", str(tmp_path))).read_text())
    assert conf["trainer"]["max_epochs"] == 2
    assert [str(v.version) for v in client.search_model_versions()] == ["2", "1"] or \
        sorted(str(v.version) for v in client.search_model_versions()) == ["1", "2"]


TOY = """
import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset


class Stream(IterableDataset):  # no len()
    def __init__(self, path):
        self.path = path

    def __iter__(self):
        d = np.load(self.path)
        for x, y in zip(d["x"], d["y"]):
            yield torch.tensor(x), torch.tensor(y)


class Line(L.LightningModule):  # no data_dir, no validation or test step
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.lin = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.lin(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class LineData(L.LightningDataModule):
    def __init__(self, data_dir: str = "nowhere", batch_size: int = 8):
        super().__init__()
        self.data_dir, self.batch_size = data_dir, batch_size

    def train_dataloader(self):
        return DataLoader(Stream(f"{self.data_dir}/train.npz"), batch_size=self.batch_size)
"""


@pytest.mark.slow
def test_own_module_and_datamodule(tmp_path, monkeypatch):
    """A user's LightningModule (no data_dir) and LightningDataModule (data_dir: the input) over an IterableDataset,
    with a ModelCheckpoint of their own and no test data: trained, theirs kept, last.ckpt beside, model logged;
    predicted from an .npy without labels (no metric)."""
    import json

    import numpy as np
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "toymod.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    data = tmp_path / "data"
    data.mkdir()
    x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    np.savez(data / "train.npz", x=x, y=2 * x + 1)
    np.save(data / "test.npy", x[:10])
    (tmp_path / "pl.yml").write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 30, "accelerator": "cpu", "enable_progress_bar": False, "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(tmp_path / "mine"), "filename": "mine"}}]},
        "model": {"class_path": "toymod.Line", "init_args": {"lr": 0.1}},
        "data": {"class_path": "toymod.LineData", "init_args": {"batch_size": 8}}}))
    (tmp_path / "ai.yml").write_text(yaml.safe_dump({
        "train": {"type": "lightning", "path": str(tmp_path / "pl.yml")},
        "inference": {"model_uri": "models:/line@champion"},
        "logger": {"experiment_name": "line", "registered_model_name": "line"}}))
    assert itwinai_main(["train", "--config", str(tmp_path / "ai.yml"), "--input", str(data), "--output",
                         str(tmp_path / "out")]) == 0
    assert (tmp_path / "mine" / "mine.ckpt").is_file()  # the user's checkpointing is kept
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("line").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["train_samples"] == 30 * 64  # 30 epochs of 64 points
    assert run.data.metrics["train_samples_per_sec"] > 0
    assert not any(k.startswith("test") for k in run.data.metrics)  # no test data, no test
    assert run.data.params["data.init_args.data_dir"] == str(data)
    assert "model.init_args.data_dir" not in run.data.params
    assert itwinai_main(["predict", "--config", str(tmp_path / "ai.yml"), "--input", str(data), "--input",
                         str(tmp_path / "out"), "--output", str(tmp_path / "pred")]) == 0
    pred = np.load(tmp_path / "pred" / "predictions.npy")
    assert pred.shape == (10, 1)
    assert np.abs(pred - (2 * x[:10] + 1)).max() < 0.1, pred.ravel()  # it learnt y = 2x + 1
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["samples"] == 10 and not {"rmse", "accuracy"} & set(summary)


def _guide_blocks() -> list[str]:
    text = (SHARED / "docs" / "prototype-guide.md").read_text()
    return [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]


@pytest.mark.slow
def test_the_guides_configs_as_written_train_and_predict(tmp_path, monkeypatch):
    """The guide's Lightning config verbatim, and its inference section (tracking_uri: file:./data/mnist/ml-logs,
    ckpt_path, train_config_artifact_path) with run_id latest: trains, predicts, and writes no ./mlruns."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lightning_yaml = next(b for b in _guide_blocks() if "class_path: itwinai.plmodels.mnist.LitMNIST" in b)
    inference = next(b for b in _guide_blocks() if "train_config_artifact_path" in b)
    inference = inference.split("inference:")[1].split("# Mlflow logger")[0]
    inference = inference.replace("run_id: e1383711ab42434eb69d67cd281fbf76", "run_id: latest")
    (tmp_path / "pl-training.yml").write_text(lightning_yaml)
    (tmp_path / "mnist-ai.yml").write_text(
        "train:\n  type: lightning\n  path: ./pl-training.yml\n\ninference:" + inference
        + "logger:\n  experiment_name: MNIST classification lite\n  registered_model_name: MNIST-clf-lite\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    learnable_splits(tmp_path / "data" / "mnist" / "preproc-images")
    assert itwinai_main(["train", "--config", "mnist-ai.yml", "--input", "data/mnist/preproc-images", "--output",
                         "data/mnist/ml-logs", "--max-epochs", "1", "--accelerator", "cpu"]) == 0
    assert itwinai_main(["predict", "--config", "mnist-ai.yml", "--input", "data/mnist/preproc-images", "--output",
                         "data/mnist/predictions"]) == 0
    assert len((tmp_path / "data/mnist/predictions/predictions.csv").read_text().splitlines()) == 65
    assert not (tmp_path / "mlruns").exists()  # the guide's MLFlowLogger save_dir: ./mlruns


def test_a_file_store_of_the_2023_tool_is_read_as_it_is(tmp_path, monkeypatch):
    """tracking_uri: file:./ml-logs naming an MLflow file store (what the prototype wrote): read in place, with the
    run's checkpoint and config artifacts, and left exactly as it was."""
    import torch
    from itwinai.plmodels.mnist import LitMNIST
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # only to write the old store here
    store = tmp_path / "ml-logs"
    client = MlflowClient(store.as_uri())
    exp = client.create_experiment("MNIST classification lite")
    run = client.create_run(exp).info.run_id
    ckpt_dir = tmp_path / "ckpt" / "model/checkpoints/best-checkpoint"
    ckpt_dir.mkdir(parents=True)
    torch.save({"state_dict": LitMNIST(hidden_size=64).state_dict()}, ckpt_dir / "best-checkpoint.ckpt")
    client.log_artifacts(run, str(tmp_path / "ckpt"))
    (tmp_path / "pl-training.yml").write_text(next(b for b in _guide_blocks() if "LitMNIST" in b))
    client.log_artifact(run, str(tmp_path / "pl-training.yml"))
    client.set_terminated(run, "FINISHED")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")

    def snapshot() -> dict:
        return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns) for p in store.rglob("*")}

    before = snapshot()
    learnable_splits(tmp_path / "data")
    cfg = tmp_path / "ai.yml"
    cfg.write_text(yaml.safe_dump({"train": {"type": "lightning", "path": "pl-training.yml"},
                                   "inference": {"type": "lightning", "tracking_uri": "file:./ml-logs", "run_id": run,
                                                 "ckpt_path": "model/checkpoints/best-checkpoint/best-checkpoint.ckpt",
                                                 "train_config_artifact_path": "pl-training.yml"},
                                   "logger": {"experiment_name": "MNIST classification lite"}}))
    assert itwinai_main(["predict", "--config", str(cfg), "--input", "data", "--output", "pred"]) == 0
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == 65
    assert snapshot() == before and not (store / "mlflow.db").exists()
