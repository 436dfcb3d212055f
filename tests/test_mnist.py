"""The MNIST use case end to end in containers (real daemon, real MLflow), then read back from the host."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, itwin
from tests.services import start_mlflow_server

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("mnist")]  # one trained model
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def wheelhouse() -> str:
    wh = os.environ.get("ITWIN_RUN_WHEELHOUSE") or "/opt/wheels"
    assert list(Path(wh).glob("torch-2.13.0*.whl")), f"no CPU torch wheel in {wh}: refusing to let pip fetch a CUDA build"
    return wh


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the use case with the offline 10k MNIST set; training shortened to 2 epochs."""
    root = tmp_path_factory.mktemp("mnist")
    root.chmod(0o755)  # a project as people have them (mktemp's are private): steps run unprivileged under root
    shutil.copytree(REPO / "use-cases" / "mnist", root / "use-cases" / "mnist")
    shutil.copytree(REPO / "itwinai", root / "itwinai", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    (root / "data" / "mnist" / "raw").mkdir(parents=True)
    for f in SHARED_MNIST.glob("*.gz"):
        shutil.copy(f, root / "data" / "mnist" / "raw")
    wf = root / "use-cases" / "mnist" / "training-workflow.yml"
    wf.write_text(wf.read_text().replace("config: ./use-cases/mnist/mnist-ai.yml",
                                         "config: ./use-cases/mnist/mnist-ai.yml\n        max-epochs: 2"))
    return root


@pytest.fixture(scope="module")
def trained(project, docker_client):
    res = itwin("use-cases/mnist/training-workflow.yml", cwd=project, env={"ITWIN_RUN_WHEELHOUSE": wheelhouse()},
                timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    run_id = res.stdout.split("itwinai: run_id=")[1].split()[0]
    return project, run_id, res


def test_preprocessing_splits_the_offline_test_set(trained):
    project, _, res = trained
    meta = json.loads((project / "data/mnist/preproc-images/meta.json").read_text())
    assert meta["counts"] == {"train": 8000, "val": 1000, "test": 1000}
    assert "only the 10k test set is available" in res.stdout


def test_run_is_readable_from_the_host(trained):
    from mlflow.tracking import MlflowClient

    project, run_id, _ = trained
    client = MlflowClient(f"sqlite:///{project}/data/mnist/ml-logs/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.init_args.hidden_size"] == "64"
    assert run.data.params["trainer.max_epochs"] == "2"
    for metric in ("train_loss_step", "val_loss", "val_acc", "test_acc", "train_samples_per_sec"):
        assert metric in run.data.metrics, metric
    assert len(client.get_metric_history(run_id, "val_loss")) == 2  # one per epoch
    dest = Path(client.download_artifacts(run_id, "", str(project / "download")))
    assert (dest / "pl-training.yml").is_file()
    assert (dest / "model/checkpoints/best-checkpoint/best-checkpoint.ckpt").stat().st_size > 100_000
    versions = client.search_model_versions("name='MNIST-clf-lite'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run_id)]


def test_registered_model_loads_in_a_host_python(trained):
    """The registry is the hand-off: `mlflow.pytorch.load_model("models:/MNIST-clf-lite@champion")` in a plain host
    Python (not itwinai) loads what the container trained and classifies a batch of held-out images."""
    project, run_id, _ = trained
    script = f"""
import json, mlflow, numpy as np, torch
mlflow.set_tracking_uri("sqlite:///{project}/data/mnist/ml-logs/mlflow.db")
model = mlflow.pytorch.load_model("models:/MNIST-clf-lite@champion").eval()
d = np.load("{project}/data/mnist/preproc-images/test.npz")
with torch.no_grad():
    pred = model(torch.from_numpy(d["x"][:500])).argmax(1).numpy()
print("accuracy", (pred == d["y"][:500]).mean())
print("signature", json.dumps(mlflow.models.get_model_info("models:/MNIST-clf-lite@champion").signature.to_dict()))
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert float(res.stdout.split("accuracy")[1].split()[0]) >= 0.85
    # a tensor of any batch size in and out, as infer_signature makes it (not Any: the image has no scipy for it)
    signature = json.loads(res.stdout.split("signature")[1])
    assert [json.loads(signature[k])[0]["type"] for k in ("inputs", "outputs")] == ["tensor", "tensor"], signature
    assert json.loads(signature["inputs"])[0]["tensor-spec"]["shape"][0] == -1, signature


@pytest.fixture(scope="module")
def server(trained):
    """`mlflow server` on the training run's store (one for the module: each start is about 5 s of CPU)."""
    project, _, _ = trained
    base, proc = start_mlflow_server(f"sqlite:///{project}/data/mnist/ml-logs/mlflow.db", project)
    yield base
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_mlflow_server_shows_the_run(trained, server):
    _, run_id, _ = trained
    run = json.load(urllib.request.urlopen(f"{server}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10))
    assert run["run"]["info"]["status"] == "FINISHED"
    art = urllib.request.urlopen(f"{server}/get-artifact?path=pl-training.yml&run_uuid={run_id}", timeout=10).read()
    assert b"itwinai.plmodels.mnist.LitMNIST" in art


def test_the_runs_page_the_demo_prints_shows_the_run_in_chromium(trained, server):
    """What `make demo` prints opens, in a real browser, the page with the run on it (not MLflow 3's empty GenAI
    overview); the screenshot is kept in test-artifacts/."""
    project, _, _ = trained
    urls = subprocess.run([sys.executable, str(REPO / "use-cases/mnist/mlflow-urls.py"), "--store",
                           str(project / "data/mnist/ml-logs"), "--ui", server], capture_output=True, text=True)
    assert urls.returncode == 0, urls.stderr
    runs_url = urls.stdout.split()[1]
    assert re.fullmatch(re.escape(server) + r"/#/experiments/\d+/runs", runs_url) and "#/models/MNIST-clf-lite" in urls.stdout
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
               "--window-size=1600,1000"]
    shot = subprocess.run([*browser, f"--screenshot={artifacts / 'mlflow-runs.png'}", runs_url], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0 and (artifacts / "mlflow-runs.png").stat().st_size > 10_000, shot.stderr[-1000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project}/data/mnist/ml-logs/mlflow.db")  # the store as it is now (the CWL
    runs = client.search_runs([runs_url.split("/")[-2]])  # test may have put newer runs in it)

    def rendered(url: str, wanted: list[str]) -> bool:
        """The page as the browser renders it holds one of `wanted` (a busy server may answer after the
        browser's time budget: a few tries)."""
        for _ in range(4):
            dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
            if any(w in dom for w in wanted):
                return True
        return False

    assert rendered(runs_url, [r.info.run_name for r in runs])  # the experiment's runs are listed on the page
    run_id = next(r.info.run_id for r in runs if "test_acc" in r.data.metrics)  # a training run
    assert rendered(f"{runs_url}/{run_id}", ["test_acc"])  # and its metrics, one click away


def test_the_run_report_opens_in_chromium_without_the_network(trained, tmp_path):
    """`itwin-run report` of the training run: one self-contained page (a row per step, an SVG timeline, the MLflow
    run id the training step logged) that Chromium renders with no request beyond the file itself."""
    project, run_id, _ = trained
    res = itwin("report", cwd=project)
    assert res.returncode == 0, res.stderr
    page = Path(res.stdout.strip())
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,900",
               "--virtual-time-budget=5000"]

    def page_requests(url: str, *args: str) -> set[str]:
        """What the page asked the network for while loading, from Chromium's net log: requests made for a page
        carry Blink's resource-loader traffic annotation (the browser's own update checks do not)."""
        netlog = tmp_path / "netlog.json"
        done = subprocess.run([*browser, f"--log-net-log={netlog}", *args, url], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-1000:]
        return set(re.findall(r'"traffic_annotation":101845102,"url":"([^"]+)"', netlog.read_text()))

    control = tmp_path / "control.html"  # the check can fail: a page with a CDN stylesheet is caught
    control.write_text('<html><link rel="stylesheet" href="https://cdn.example.invalid/a.css"></html>')
    assert page_requests(control.as_uri(), "--dump-dom") == {"https://cdn.example.invalid/a.css"}
    assert page_requests(page.as_uri(), f"--screenshot={artifacts / 'run-report.png'}") == set()
    assert (artifacts / "run-report.png").stat().st_size > 10_000
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    rows = dom.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr>") == 2 and "preprocessing" in rows and "ml-training" in rows
    assert 'class="timeline"' in dom and run_id in rows


def test_inference_in_a_fresh_container_uses_the_run(trained, no_leftovers):
    project, run_id, _ = trained
    res = itwin("use-cases/mnist/inference-workflow.yml", cwd=project, env={"ITWIN_RUN_WHEELHOUSE": wheelhouse()},
                timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"using the newest finished run {run_id}" in res.stdout
    assert "Tip:" not in res.stdout + res.stderr, res.stdout[-3000:]  # Lightning's adverts are not the user's
    summary = json.loads((project / "data/mnist/ml-predictions/summary.json").read_text())
    assert summary["run_id"] == run_id and summary["samples"] == 1000
    assert summary["accuracy"] >= 0.90, summary
    rows = (project / "data/mnist/ml-predictions/predictions.csv").read_text().splitlines()
    assert rows[0] == "index,predicted,probability,label" and len(rows) == 1001


def test_training_workflow_under_apptainer(trained, apptainer_env):
    """The same training workflow with --engine apptainer: the step image converted to a SIF, a second run logged."""
    from mlflow.tracking import MlflowClient

    project, docker_run, _ = trained
    res = itwin("--engine", "apptainer", "use-cases/mnist/training-workflow.yml", cwd=project,
                env={**apptainer_env, "ITWIN_RUN_WHEELHOUSE": wheelhouse()}, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    run_id = res.stdout.split("itwinai: run_id=")[1].split()[0]
    assert run_id != docker_run
    client = MlflowClient(f"sqlite:///{project}/data/mnist/ml-logs/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] >= 0.85
    assert [str(v.version) for v in client.search_model_versions("name='MNIST-clf-lite'")] in (["2", "1"], ["1", "2"])


def test_training_workflow_in_cwl_mode(trained):
    """--cwl: cwltool runs workflow.cwl in the step images; the MLflow run is readable from the host like classical."""
    from mlflow.tracking import MlflowClient

    project, _, _ = trained
    wf = project / "use-cases" / "mnist" / "training-workflow.yml"
    wf.write_text(wf.read_text() + "trainingMaxEpochs: 2\n")
    res = itwin("--cwl", "use-cases/mnist/training-workflow.yml", cwd=project,
                env={"ITWIN_RUN_WHEELHOUSE": wheelhouse()}, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    assert "earlier contents of dataset ml-logs are kept in" in res.stderr  # the classical runs are not lost
    run_id = res.stdout.split("itwinai: run_id=")[1].split()[0]
    # a URI this process has not opened yet: MLflow keeps one database engine per URI, and the file was replaced
    client = MlflowClient(f"sqlite:///{project}/data/mnist/ml-logs/./mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_epochs"] == "2"
    assert run.data.metrics["test_acc"] >= 0.85
    dest = Path(client.download_artifacts(run_id, "", str(project / "download-cwl")))
    assert (dest / "model/checkpoints/best-checkpoint/best-checkpoint.ckpt").is_file()
    assert (dest / "pl-training.yml").is_file()
    assert json.loads((project / "data/mnist/preproc-images/meta.json").read_text())["counts"]["train"] == 8000

