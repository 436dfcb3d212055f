"""Where to look at the MNIST runs in MLflow's UI. MLflow 3 opens an experiment on its GenAI overview page, where
these runs do not show: their place is the experiment's Runs view, and the trained model's the Models page.

    python use-cases/mnist/mlflow-urls.py --store data/mnist/ml-logs [--ui http://127.0.0.1:5000]
"""

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient

ap = argparse.ArgumentParser()
ap.add_argument("--store", type=Path, required=True, help="the directory holding mlflow.db (the training's output)")
ap.add_argument("--ui", default="http://127.0.0.1:5000", help="where `mlflow ui` listens")
ap.add_argument("--experiment", default="MNIST classification lite")
ap.add_argument("--model", default="MNIST-clf-lite")
args = ap.parse_args()
client = MlflowClient(f"sqlite:///{args.store.resolve()}/mlflow.db")
experiment = client.get_experiment_by_name(args.experiment)
if experiment is None:
    raise SystemExit(f"no experiment {args.experiment!r} in {args.store}: run the training workflow first")
print(f"runs:  {args.ui}/#/experiments/{experiment.experiment_id}/runs")
print(f"model: {args.ui}/#/models/{args.model}")
