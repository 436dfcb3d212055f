"""`itwinai predict`: load a trained model from MLflow and predict with `trainer.predict` (the module's predict_step).

Which model: `inference.model_uri` (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN_ID/PATH`), else
`inference.run_id` (a run id, or `latest`: the newest finished run that holds a model). A run written before models
were logged is loaded from its checkpoint and training config (`ckpt_path`, `train_config_artifact_path`).

Which data: the training config's datamodule when it has a predict_dataloader (its `data_dir` is the input), else the
input dataset's `SPLIT.npz` (`x`, and `y` when labels exist) or `SPLIT.npy` (`x` only).

What is written to --output (documented in the README):
- a module whose predict_step returns a dict of per-sample values (MNIST: `predicted`, `probability`) gets
  `predictions.csv`, one row per sample: `index`, those columns, `label` when labels exist;
- one that returns tensors gets `predictions.npy` (all samples), and with labels of the same shape
  `prediction-vs-truth.png`;
- `summary.json`: model URI, samples, and a metric only when labels exist (accuracy for a `predicted` column, RMSE
  and MAE for arrays).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from itwinai.config import ItwinaiError, MLOpsConfig, import_class, read_yaml, require_lightning
from itwinai.registry import MODEL_TAG
from itwinai.tracking import ARTIFACTS, DB_NAME, normalise, tracking_uri

DEFAULT_CKPT = "model/checkpoints/best-checkpoint/best-checkpoint.ckpt"
URI_PREFIXES = ("models:/", "runs:/")


def find_run(client, experiment: str, run_id: str | None) -> str:
    """The configured run, or for `latest`/missing the newest FINISHED run of the experiment that holds a model."""
    if run_id and str(run_id).lower() != "latest":
        return str(run_id)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ItwinaiError(f"no experiment {experiment!r} in the tracking store: train first")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"attributes.status = 'FINISHED' and tags.`{MODEL_TAG}` != ''",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ItwinaiError(f"experiment {experiment!r} has no finished run with a model: train first")
    print(f"itwinai: inference.run_id is {run_id or 'missing'}: using the newest finished run "
          f"{runs[0].info.run_id} of {experiment!r}", flush=True)
    return runs[0].info.run_id


def load_model(ckpt: Path, train_conf: dict, data_dir: str):
    """A model from a checkpoint and the training config that made it (runs without a logged model)."""
    import inspect

    import torch

    model_conf = train_conf.get("model") or {}
    class_path = model_conf.get("class_path")
    if not class_path:
        raise ItwinaiError("training config artifact has no model.class_path")
    cls = import_class(class_path, "model class")
    init_args = dict(model_conf.get("init_args") or {})
    if "data_dir" in inspect.signature(cls).parameters:
        init_args["data_dir"] = data_dir
    model = cls(**init_args)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"])
    except Exception as exc:
        raise ItwinaiError(f"checkpoint {ckpt.name} is unreadable or does not fit {class_path}: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    model.eval()
    return model


def store_uri(cfg: MLOpsConfig, inputs: list[str], uri: str | None) -> str:
    """--tracking-uri, MLFLOW_TRACKING_URI, inference.tracking_uri, else the store in one of the inputs."""
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return tracking_uri(uri, None)
    if cfg.inference.get("tracking_uri"):
        return normalise(str(cfg.inference["tracking_uri"]), reading=True)
    stores = [d for d in inputs if Path(d, DB_NAME).is_file()]
    if stores:
        return f"sqlite:///{Path(stores[0]).resolve() / DB_NAME}"
    raise ItwinaiError("no tracking store: set inference.tracking_uri, give --tracking-uri, or pass the training "
                       "output (the directory holding mlflow.db) as an --input")


def _training_config(client, run_id: str | None, conf_path: str, tmp: str) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return read_yaml(client.download_artifacts(run_id, conf_path, tmp), "training config artifact")
    except (MlflowException, OSError):
        return None


def resolve(client, cfg: MLOpsConfig, tmp: str, input_dir: str | None):
    """(model, where it came from, the run that made it, its training config or None)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    inf = cfg.inference
    conf_path = str(inf.get("train_config_artifact_path") or "pl-training.yml")
    model_uri = inf.get("model_uri")
    run_id = None
    if model_uri:
        model_uri = str(model_uri)
        if not model_uri.startswith(URI_PREFIXES):
            raise ItwinaiError(f"{cfg.path}: inference.model_uri: {model_uri!r} is not models:/NAME/VERSION, "
                               "models:/NAME@ALIAS or runs:/RUN_ID/PATH")
        try:
            if model_uri.startswith("models:/"):
                name, sep, alias = model_uri.removeprefix("models:/").partition("@")
                mv = (client.get_model_version_by_alias(name, alias) if sep
                      else client.get_model_version(*name.split("/", 1)))
                run_id = mv.run_id
            else:
                run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        except (MlflowException, TypeError) as exc:
            raise ItwinaiError(f"{cfg.path}: inference.model_uri: {model_uri}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
    else:
        run_id = find_run(client, cfg.experiment_name, inf.get("run_id"))
        model_uri = client.get_run(run_id).data.tags.get(MODEL_TAG)
    train_conf = _training_config(client, run_id, conf_path, tmp)
    if model_uri:
        try:
            model = mlflow.pytorch.load_model(_local_model(client, model_uri, run_id), map_location="cpu")
        except Exception as exc:
            raise ItwinaiError(f"cannot load the model {model_uri}: {str(exc).splitlines()[0][:200]}") from None
        return model.eval(), model_uri, run_id, train_conf
    ckpt_path = str(inf.get("ckpt_path") or DEFAULT_CKPT)
    try:
        ckpt = Path(client.download_artifacts(run_id, ckpt_path, tmp))
        if train_conf is None:
            client.download_artifacts(run_id, conf_path, tmp)
    except (MlflowException, OSError) as exc:
        raise ItwinaiError(f"run {run_id}: cannot download {ckpt_path} / {conf_path}: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    return load_model(ckpt, train_conf or {}, input_dir or "."), f"runs:/{run_id}", run_id, train_conf


def _local_model(client, model_uri: str, run_id: str | None) -> str:
    """The logged model's folder when the store is local: found under the store's own folder when the store was
    moved or is mounted elsewhere (a copied project, a CWL input), where the absolute paths MLflow recorded are not."""
    import mlflow
    from mlflow.utils.file_utils import local_file_uri_to_path

    store = mlflow.get_tracking_uri()
    if not store.startswith("sqlite:///"):
        return model_uri
    logged = model_uri
    if model_uri.startswith("models:/"):
        name, sep, alias = model_uri.removeprefix("models:/").partition("@")
        if "/" in name or sep:  # a registered model: its version's source is the logged model
            mv = client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(*name.split("/"))
            logged = mv.source
    elif run_id and model_uri == f"runs:/{run_id}/model":
        logged = client.get_run(run_id).data.tags.get(MODEL_TAG) or model_uri
    if not logged.startswith("models:/m-"):
        return model_uri
    location = client.get_logged_model(logged.removeprefix("models:/")).artifact_location
    if not location.startswith("file:"):
        return model_uri
    path = Path(local_file_uri_to_path(location))
    if path.exists():
        return str(path)
    _, sep, rest = str(path).partition(f"/{ARTIFACTS}/")
    moved = Path(store.removeprefix("sqlite:///")).parent / ARTIFACTS / rest
    return str(moved) if sep and moved.exists() else model_uri


def _datamodule(train_conf: dict[str, Any] | None, input_dir: str | None):
    """The training config's datamodule, when it can give predict data (`data_dir` set to the input)."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    data = (train_conf or {}).get("data")
    if not isinstance(data, dict) or not data.get("class_path"):
        return None
    cls = import_class(str(data["class_path"]), "datamodule class")
    if not is_overridden("predict_dataloader", cls, LightningDataModule):
        return None
    import inspect

    args = dict(data.get("init_args") or {})
    if input_dir and "data_dir" in inspect.signature(cls).parameters:
        args["data_dir"] = str(Path(input_dir).resolve())
    return cls(**args)


def _array_data(inputs: list[str], split: str):
    """(x, y or None, directory) from SPLIT.npz (x, y) or SPLIT.npy (x) in one of the inputs."""
    import numpy as np

    for d in inputs:
        npz, npy = Path(d, f"{split}.npz"), Path(d, f"{split}.npy")
        if npz.is_file():
            with np.load(npz) as f:
                if "x" not in f:
                    raise ItwinaiError(f"{npz}: no array 'x' (the inputs; 'y' holds the labels when there are any)")
                return f["x"], (f["y"] if "y" in f else None), d
        if npy.is_file():
            return np.load(npy), None, d
    raise ItwinaiError(f"no input holds a {split!r} split ({split}.npz or {split}.npy): {', '.join(inputs)}")


def _labels_callback():
    from lightning.pytorch.callbacks import Callback

    class Labels(Callback):
        """The labels of (x, y) predict batches, in order."""
        def __init__(self):
            self.seen: list = []

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if isinstance(batch, (list, tuple)) and len(batch) == 2:
                self.seen.append(batch[1].detach().cpu())

    return Labels()


def _concat(outputs: list[Any]):
    import torch

    if not outputs:
        raise ItwinaiError("the model predicted nothing (an empty predict dataloader)")
    if isinstance(outputs[0], dict):
        return {k: torch.cat([torch.as_tensor(o[k]).reshape(-1) for o in outputs]).cpu() for k in outputs[0]}
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat([o.detach() for o in outputs]).cpu()
    raise ItwinaiError(f"predict_step returned {type(outputs[0]).__name__}: return a tensor, or a dict of "
                       "per-sample tensors")


def predict(cfg: MLOpsConfig, inputs: list[str], output_dir: str, uri: str | None, split: str = "test") -> dict:
    import lightning as L
    import mlflow
    import numpy as np
    import torch
    from lightning.pytorch.utilities.model_helpers import is_overridden
    from mlflow.tracking import MlflowClient
    from torch.utils.data import DataLoader, TensorDataset

    from itwinai.train import quiet_lightning

    quiet_lightning()
    require_lightning(str(cfg.inference.get("type", "lightning")).lower(), "inference", cfg.path)
    uri = store_uri(cfg, inputs, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="itwinai-predict-") as tmp:
        model, source, run_id, train_conf = resolve(client, cfg, tmp, inputs[0] if inputs else None)
        candidates = [d for d in inputs if not Path(d, DB_NAME).is_file()] or inputs
        dm = _datamodule(train_conf, candidates[0] if candidates else None)
    labels = _labels_callback()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[labels])
    y = None
    if dm is not None:
        raw = trainer.predict(model, datamodule=dm)
        input_desc = f"{type(dm).__name__}.predict_dataloader"
    else:
        x, y, where = _array_data(inputs, split)
        xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
        # a module with its own predict_step gets (x,) batches; Lightning's default one calls forward(batch)
        ds = TensorDataset(xt) if is_overridden("predict_step", model) else xt
        raw = trainer.predict(model, dataloaders=DataLoader(ds, batch_size=1024))
        input_desc = str(Path(where, f"{split}").resolve())
    if y is None and labels.seen:
        y = torch.cat(labels.seen).numpy()
    preds = _concat(raw)
    summary: dict[str, Any] = {"model": source, "run_id": run_id, "split": split, "input": input_desc}
    if isinstance(preds, dict):
        n = len(next(iter(preds.values())))
        with open(out / "predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", *preds, *(["label"] if y is not None else [])])
            for i in range(n):
                row = [_cell(v[i]) for v in preds.values()]
                w.writerow([i, *row, *([_cell(y[i])] if y is not None else [])])
        if y is not None and "predicted" in preds:
            summary["accuracy"] = round(float((preds["predicted"].numpy() == np.asarray(y).reshape(-1)).mean()), 6)
    else:
        arr = preds.numpy()
        n = len(arr)
        np.save(out / "predictions.npy", arr)
        if y is not None and np.shape(y) == arr.shape:
            err = arr - np.asarray(y, dtype=arr.dtype)
            summary["rmse"] = round(float(np.sqrt((err ** 2).mean())), 6)
            summary["mae"] = round(float(np.abs(err).mean()), 6)
            from itwinai.plots import prediction_vs_truth

            prediction_vs_truth(arr, np.asarray(y), out / "prediction-vs-truth.png")
    summary["samples"] = n
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metric = "".join(f", {k} {summary[k]:.4f}" for k in ("accuracy", "rmse", "mae") if k in summary)
    print(f"itwinai: predicted {n} samples with {source}{metric}", flush=True)
    return summary


def _cell(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:.6f}" if isinstance(v, float) else v
