#!/usr/bin/env bash
# GPU check for itwinai (run on a GPU machine, no container): LitMNIST through `itwinai train` with
# accelerator gpu, then cpu, same data and config; prints samples/s of each.
# Usage: bench/gpu_check.sh MNIST_DIR [EPOCHS]   (MNIST_DIR holds the IDX .gz files)
set -euo pipefail
src=${1:?usage: gpu_check.sh MNIST_DIR [EPOCHS]}
epochs=${2:-3}
export PYTHONPATH="$PWD/itwinai/src${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 use-cases/mnist/mnist-preproc.py --source "$src" --output "$work/data"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__, "cuda", torch.cuda.is_available())'
for acc in gpu cpu; do
  python3 -m itwinai.cli train --config use-cases/mnist/mnist-ai.yml --input "$work/data" --output "$work/logs-$acc" \
    --max-epochs "$epochs" --accelerator "$acc" > "$work/$acc.log" 2>&1 || { tail -30 "$work/$acc.log"; exit 1; }
  grep -E "GPU available|itwinai: trained|run_id=" "$work/$acc.log" | sed "s/^/[$acc] /"
done
python3 - "$work" <<'PY'
import re, sys
rate = {a: float(re.search(r"\((\d+) samples/s\)", open(f"{sys.argv[1]}/{a}.log").read()).group(1)) for a in ("gpu", "cpu")}
print(f"samples/s: gpu {rate['gpu']:.0f}, cpu {rate['cpu']:.0f}, gpu/cpu {rate['gpu'] / rate['cpu']:.2f}")
PY
