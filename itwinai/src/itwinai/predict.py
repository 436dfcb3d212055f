"""`itwinai predict`: load a trained model from an MLflow run and predict on a dataset."""

from __future__ import annotations

import csv
import importlib
import json
import os
import tempfile
from pathlib import Path

from itwinai.config import ItwinaiError, MLOpsConfig, read_yaml, require_lightning
from itwinai.tracking import DB_NAME, normalise, tracking_uri

DEFAULT_CKPT = "model/checkpoints/best-checkpoint/best-checkpoint.ckpt"


def find_run(client, experiment: str, run_id: str | None) -> str:
    """The configured run, or the newest FINISHED run of the experiment for `latest`/missing."""
    if run_id and str(run_id).lower() != "latest":
        return str(run_id)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ItwinaiError(f"no experiment {experiment!r} in the tracking store: train first")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ItwinaiError(f"experiment {experiment!r} has no FINISHED run: train first")
    print(f"itwinai: inference.run_id is {run_id or 'missing'}: using the newest finished run "
          f"{runs[0].info.run_id} of {experiment!r}", flush=True)
    return runs[0].info.run_id


def load_model(ckpt: Path, train_conf: dict, data_dir: str):
    import torch

    model_conf = train_conf.get("model") or {}
    class_path = model_conf.get("class_path")
    if not class_path:
        raise ItwinaiError("training config artifact has no model.class_path")
    module, _, cls_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ItwinaiError(f"cannot import model class {class_path}: {exc}") from None
    init_args = dict(model_conf.get("init_args") or {})
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


def predict(cfg: MLOpsConfig, inputs: list[str], output_dir: str, uri: str | None, split: str = "test") -> dict:
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from itwinai.plmodels.mnist import load_split

    inf = cfg.inference
    require_lightning(str(inf.get("type", "lightning")).lower(), "inference", cfg.path)
    data_dirs = [d for d in inputs if Path(d, f"{split}.npz").is_file()]
    if not data_dirs:
        raise ItwinaiError(f"no input holds a {split!r} split ({split}.npz): {', '.join(inputs)}")
    input_dir = data_dirs[0]
    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        stores = [d for d in inputs if Path(d, DB_NAME).is_file()]
        if inf.get("tracking_uri"):
            uri = normalise(str(inf["tracking_uri"]))
        elif stores:
            uri = f"sqlite:///{Path(stores[0]).resolve() / DB_NAME}"
    uri = tracking_uri(uri, None)
    client = MlflowClient(uri)
    run_id = find_run(client, cfg.experiment_name, inf.get("run_id"))
    ckpt_path = str(inf.get("ckpt_path") or DEFAULT_CKPT)
    conf_path = str(inf.get("train_config_artifact_path") or "pl-training.yml")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="itwinai-predict-") as tmp:
        try:
            ckpt = Path(client.download_artifacts(run_id, ckpt_path, tmp))
            conf_file = Path(client.download_artifacts(run_id, conf_path, tmp))
        except (MlflowException, OSError) as exc:
            raise ItwinaiError(f"run {run_id}: cannot download {ckpt_path} / {conf_path}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
        model = load_model(ckpt, read_yaml(conf_file, "training config artifact"), input_dir)
    data = load_split(input_dir, split)
    x, y = data.tensors
    with torch.no_grad():
        probs = torch.cat([model(x[i:i + 1024]).exp() for i in range(0, len(x), 1024)])
    conf, pred = probs.max(dim=1)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "predicted", "probability", "label"])
        for i in range(len(pred)):
            w.writerow([i, int(pred[i]), f"{float(conf[i]):.6f}", int(y[i])])
    summary = {"run_id": run_id, "split": split, "samples": len(pred),
               "accuracy": round(float((pred == y).float().mean()), 6), "input": str(Path(input_dir).resolve())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"itwinai: predicted {len(pred)} samples with run {run_id}: accuracy {summary['accuracy']:.4f}", flush=True)
    return summary
