#!/usr/bin/env bash
# `make demo`: MNIST training then inference, in containers, offline where the full MNIST set cannot be downloaded.
set -euo pipefail
cd "$(dirname "$0")/../.."
raw=data/mnist/raw
shared=../shared/data/mnist
if [ -d "$shared" ] && ! ls "$raw"/t10k-images-idx3-ubyte.gz >/dev/null 2>&1; then
  mkdir -p "$raw" && cp "$shared"/*.gz "$raw"/   # the offline 10k set; without it the full set is downloaded
fi
.venv/bin/itwin-run --engine docker use-cases/mnist/training-workflow.yml
.venv/bin/itwin-run --engine docker use-cases/mnist/inference-workflow.yml
python3 - <<'PY'
import json
s = json.load(open("data/mnist/ml-predictions/summary.json"))
print(f"\nrun id {s['run_id']}: test accuracy {s['accuracy']:.4f} on {s['samples']} held-out images")
PY
echo "predictions: data/mnist/ml-predictions/predictions.csv"
echo "MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/data/mnist/ml-logs/mlflow.db --port 5000"
echo "then open (the experiment's Runs view; MLflow 3 opens experiments on an empty GenAI overview):"
.venv/bin/python use-cases/mnist/mlflow-urls.py --store data/mnist/ml-logs
