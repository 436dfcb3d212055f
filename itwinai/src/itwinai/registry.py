"""The trained model into MLflow: logged as a loadable model, and registered as a version with an alias."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from mlflow.types.schema import Schema

MODEL_ARTIFACT = "model"
MODEL_TAG = "itwinai.model_uri"  # set on a run once its model is logged: `run_id: latest` picks only such runs
DEFAULT_ALIAS = "champion"


def log_model(uri: str, run_id: str, model, example) -> str:
    """A loadable MLflow model (`mlflow.pytorch.load_model(URI)`), with signature and input example; the model's own
    package goes with it (code_paths), so that a Python with torch and lightning loads it without installing it."""
    import lightning
    import mlflow
    import torch
    from mlflow.models.signature import ModelSignature

    model = model.cpu().eval()
    model._trainer = None  # nothing of the training run goes into the pickle
    signature, input_example = None, None
    if example is not None:
        with torch.no_grad():
            out = model(example)
        if isinstance(out, torch.Tensor):
            signature = ModelSignature(tensor_schema(example.numpy()), tensor_schema(out.numpy()))
            input_example = example.numpy()
    top = sys.modules[type(model).__module__.partition(".")[0]]
    where = getattr(top, "__file__", None)  # a package's folder, or a module's one file
    code = [str(Path(where).parent if hasattr(top, "__path__") else where)] if where else None
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"lightning=={lightning.__version__}",
            f"mlflow=={mlflow.__version__}", "numpy"]
    # pickle on purpose (pt2 would drop predict_step): MLflow's warning about it would only be noise in every log
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pytorch.log_model(model, name=MODEL_ARTIFACT, signature=signature, input_example=input_example,
                                        code_paths=code, pip_requirements=reqs,
                                        serialization_format="pickle")  # a LightningModule, predict_step kept
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_tag(run_id, MODEL_TAG, info.model_uri)
    return info.model_uri


def tensor_schema(array: np.ndarray) -> Schema:
    """What mlflow's infer_signature makes of an array, a tensor of any batch size, without its import of scipy (the
    training image has none: mlflow-skinny)."""
    from mlflow.types.schema import Schema, TensorSpec

    return Schema([TensorSpec(array.dtype, (-1, *array.shape[1:]))])


def register(client, name: str, run_id: str, model_uri: str, alias: str | None = DEFAULT_ALIAS) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id).version
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return str(version)
