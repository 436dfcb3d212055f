"""`itwinai train`: a Lightning CLI config trained with MLflow tracking.

What itwinai adds to the user's Lightning config:
- `--input` fills a `data_dir` argument of the model or the datamodule, only where one is declared;
- its MLflow logger (bound to one run; any MLFlowLogger in the config is replaced, other loggers are kept), on the
  process whose `trainer.global_rank` is 0 only, whatever started the processes (Lightning, srun, torchrun);
- checkpoints in the output dataset (`checkpoints/`): `last.ckpt` always (what `--resume` continues from), and the
  best by `val_loss` unless the config has a ModelCheckpoint of its own;
- at the end, on rank 0: the test split (only where the model or datamodule has test data), a loadable MLflow model
  (`mlflow.pytorch.log_model`, with signature and input example), registered with an alias when
  `logger.registered_model_name` is set, and the effective config (`pl-training.yml`) as an artifact;
- `metrics.json` in the output dataset: the last value of each metric (what a sweep picks its best point by);
- dotted settings of the Lightning config from the command line (`--model.init_args.hidden 16`), and for a point
  of an itwin-run sweep one store and one parent run for all points (itwinai.sweep).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from itwinai import sweep
from itwinai.config import ItwinaiError, MLOpsConfig, flatten, import_class, read_yaml, require_lightning, set_dotted
from itwinai.registry import DEFAULT_ALIAS, log_model, register
from itwinai.tracking import artifact_location, ensure_experiment, tracking_uri

CKPT_DIR = "model/checkpoints/best-checkpoint"  # where the best checkpoint is logged (the prototype's ckpt_path)
CKPT_NAME = "best-checkpoint"
CONFIG_ARTIFACT = "pl-training.yml"
CHECKPOINTS = "checkpoints"  # inside the output dataset
RUN_FILE = "itwinai-run.json"  # beside last.ckpt: the MLflow run a resumed training continues
CKPT_ENV = "ITWINAI_CHECKPOINTS"


def declares(class_path: str, arg: str) -> bool:
    params = inspect.signature(import_class(class_path, "class")).parameters
    return arg in params


def lightning_config(cfg: MLOpsConfig, input_dir: str | None, overrides: dict[str, Any],
                     settings: dict[str, Any] | None = None) -> dict[str, Any]:
    require_lightning(cfg.train_type, "train", cfg.path)
    if cfg.train_path is None:
        raise ItwinaiError(f"{cfg.path}: train.path: the Lightning config file is missing")
    conf = read_yaml(cfg.train_path, "Lightning training config")
    model = conf.get("model")
    if not isinstance(model, dict) or "class_path" not in model:
        raise ItwinaiError(f"{cfg.train_path}: model: needs class_path (and init_args)")
    data = conf.get("data")
    if data is not None and (not isinstance(data, dict) or "class_path" not in data):
        raise ItwinaiError(f"{cfg.train_path}: data: needs class_path (a LightningDataModule) and init_args")
    if input_dir:
        for section in (model, data):
            if section and declares(str(section["class_path"]), "data_dir"):
                section.setdefault("init_args", {})["data_dir"] = str(Path(input_dir).resolve())
    trainer = conf.setdefault("trainer", {})
    trainer.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in (settings or {}).items():  # --model.init_args.hidden 16 (a sweep's point)
        set_dotted(conf, key, value, cfg.train_path)
    return conf


def _checkpoint_dir(output_dir: str | None) -> Path:
    """In the output dataset (kept: `--resume` continues from it), else a directory every rank shares (the processes
    Lightning's launcher starts later inherit the first one's choice)."""
    if output_dir:
        return Path(output_dir, CHECKPOINTS)
    return Path(os.environ.get(CKPT_ENV) or tempfile.mkdtemp(prefix="itwinai-"))


def _logger_configs(trainer: dict[str, Any]) -> list[Any]:
    """The config's loggers but MLFlowLogger (itwinai gives rank 0 its own, bound to the run)."""
    loggers = trainer.get("logger")
    if loggers in (None, True, False):
        return []
    items = loggers if isinstance(loggers, list) else [loggers]
    return [lg for lg in items if not (isinstance(lg, dict) and "MLFlowLogger" in str(lg.get("class_path")))]


def _callbacks(trainer: dict[str, Any], ckpt_dir: Path, monitor: str | None) -> list[Any]:
    """The config's callbacks, and a ModelCheckpoint of itwinai's when the config has none."""
    callbacks = list(trainer.get("callbacks") or [])
    if not any("ModelCheckpoint" in str(c.get("class_path") if isinstance(c, dict) else c) for c in callbacks):
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
            "dirpath": str(ckpt_dir), "filename": CKPT_NAME, "monitor": monitor, "mode": "min", "save_top_k": 1,
            "enable_version_counter": False}})
    return callbacks


def _last_checkpoint(path: Path):
    """last.ckpt at the end of every epoch, whatever checkpointing the config has (a second ModelCheckpoint would
    clash with the user's own): what `--resume` continues from."""
    from lightning.pytorch.callbacks import Callback

    class LastCheckpoint(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.save_checkpoint(path)

    return LastCheckpoint()


def _batch_size(batch: Any) -> int:
    import torch

    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 0


def first_inputs(batch: Any):
    """The model inputs of a batch: the batch itself, or its first element for (x, y) batches."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return None


def _count_samples():
    """A callback that counts the samples trained (no len() on datasets: an IterableDataset has none)."""
    from lightning.pytorch.callbacks import Callback

    class SampleCounter(Callback):
        samples = 0
        example = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.samples += _batch_size(batch)
            if self.example is None:
                x = first_inputs(batch)
                self.example = None if x is None else x[:4].detach().cpu().clone()

    return SampleCounter()


def _null_logger():
    """The logger of ranks other than 0: Lightning logs from rank 0 only, but callbacks such as LearningRateMonitor
    want a logger on every rank. This one touches no store (an MLflow client would create one)."""
    from lightning.pytorch.loggers.logger import Logger

    class RankLogger(Logger):
        name = "itwinai"
        version = 0

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return RankLogger()


def _has_test_data(model, datamodule) -> bool:
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if not is_overridden("test_step", model):
        return False
    return is_overridden("test_dataloader", model) or (datamodule is not None
                                                       and is_overridden("test_dataloader", datamodule))


class _NotTheUsers(logging.Filter):
    """Lines Lightning logs that ask nothing of the user: its LitLogger advert, the `weights_only` default it notes at
    every checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip:", "`weights_only` was not set"))


def quiet_lightning() -> None:
    """Only what the user can act on: not the adverts and notes above, not that the checkpoint folder is not empty
    (itwinai writes its run file there, and resumes from what is there), not Lightning's own deprecations."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector",
                 "pytorch_lightning.utilities.rank_zero"):  # (a model logged by mlflow.pytorch loads through it)
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotTheUsers) for f in logger.filters):  # once per process
            logger.addFilter(_NotTheUsers())
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def train(cfg: MLOpsConfig, input_dir: str | None, output_dir: str | None, uri: str | None,
          overrides: dict[str, Any], resume: bool = False, settings: dict[str, Any] | None = None) -> str:
    """Train; in a distributed run every rank trains, the one with trainer.global_rank 0 alone tracks in MLflow."""
    from lightning.pytorch.cli import LightningCLI

    quiet_lightning()
    conf = lightning_config(cfg, input_dir, overrides, settings)
    resume = resume or cfg.resume
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(uri, sweep.store_dir(output_dir))  # a sweep's points: one store, the sweep's
    ckpt_dir = _checkpoint_dir(output_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    shared = not output_dir and CKPT_ENV not in os.environ  # this process chose a scratch directory
    if shared:
        os.environ[CKPT_ENV] = str(ckpt_dir)
    last = ckpt_dir / "last.ckpt"
    resume_from = last if resume and last.is_file() else None

    full = copy.deepcopy(conf)
    trainer = full["trainer"]
    model_cls = import_class(str(full["model"]["class_path"]), "model class")
    from lightning.pytorch import LightningModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    monitor = "val_loss" if is_overridden("validation_step", model_cls, LightningModule) else None
    extra_loggers = _logger_configs(trainer)
    trainer["logger"] = extra_loggers or False
    trainer["callbacks"] = _callbacks(trainer, ckpt_dir, monitor)
    log = cfg.logger
    trainer.setdefault("log_every_n_steps", int(log.get("log_every_n_steps", 50)))
    trainer.setdefault("check_val_every_n_epoch", int(log.get("log_every_n_epoch", 1)))
    trainer.setdefault("default_root_dir", str(ckpt_dir))
    argv, sys.argv = sys.argv, sys.argv[:1]  # the config comes from `args`, not our command line
    try:
        cli = LightningCLI(args=full, run=False, save_config_callback=None, parser_kwargs={"exit_on_error": False})
    except (SystemExit, Exception) as exc:  # jsonargparse reports bad configs this way
        raise ItwinaiError(f"{cfg.train_path}: invalid Lightning config: {str(exc).strip().splitlines()[0]}") from None
    finally:
        sys.argv = argv
    trainer_obj, model, datamodule = cli.trainer, cli.model, cli.datamodule
    rank = trainer_obj.global_rank
    effective = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_check=True))

    client, run_id = None, ""
    if rank == 0:
        if resume_from:
            print(f"itwinai: resuming from {resume_from}", flush=True)
        else:  # a fresh training: no checkpoint of an earlier one is taken for this one's
            if resume:
                print(f"itwinai: resume: no {last}: training from the start", flush=True)
            for old in [*ckpt_dir.glob(f"{CKPT_NAME}*.ckpt"), *ckpt_dir.glob("last*.ckpt"), ckpt_dir / RUN_FILE]:
                old.unlink(missing_ok=True)
        client, run_id = _start_run(cfg, uri, ckpt_dir, resume_from is not None, output_dir)
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name=cfg.experiment_name, tracking_uri=uri, run_id=run_id,
                              artifact_location=artifact_location(uri))
        _log_params(client, run_id, effective)
    else:
        logger = _null_logger()
    trainer_obj.loggers = [logger, *trainer_obj.loggers]
    counter = _count_samples()
    trainer_obj.callbacks += [counter, _last_checkpoint(last)]
    try:
        start = time.perf_counter()
        trainer_obj.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
        elapsed = time.perf_counter() - start
        fitted = dict(trainer_obj.callback_metrics)  # the last val_loss etc. (testing replaces them)
        print(f"itwinai: rank {trainer_obj.global_rank} of world size {trainer_obj.world_size} trained", flush=True)
        # every rank's own count, summed (a rank may see a batch more or less than another): a collective call
        import torch

        print(f"itwinai: {torch.get_num_threads()} CPU thread(s)", flush=True)  # OMP_NUM_THREADS where it is set
        count = torch.tensor(counter.samples, dtype=torch.float64, device=trainer_obj.strategy.root_device)
        samples = int(trainer_obj.strategy.reduce(count, reduce_op="sum"))
        best = _best_checkpoint(trainer_obj)
        trainer_obj.strategy.barrier()
        if _has_test_data(model, datamodule):
            trainer_obj.test(model, datamodule=datamodule, ckpt_path=str(best) if best else None, verbose=False)
        elif best:
            _load_weights(model, best)
        if client:
            if output_dir:
                sweep.write_metrics(output_dir, {**fitted, **trainer_obj.callback_metrics})
            rate = samples / elapsed if elapsed else 0.0
            client.log_metric(run_id, "train_samples", samples)
            client.log_metric(run_id, "train_samples_per_sec", rate)
            print(f"itwinai: trained {samples} samples in {elapsed:.1f}s ({rate:.0f} samples/s)", flush=True)
            if best:
                client.log_artifact(run_id, str(best), CKPT_DIR)
            with tempfile.TemporaryDirectory(prefix="itwinai-config-") as tmp:
                cfg_file = Path(tmp, CONFIG_ARTIFACT)
                cfg_file.write_text(yaml.safe_dump(effective, sort_keys=False))
                client.log_artifact(run_id, str(cfg_file))
            model_uri = log_model(uri, run_id, model, counter.example) if best or counter.samples else None
    except BaseException:
        if client:
            client.set_terminated(run_id, "FAILED")
        raise
    finally:
        if shared:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            os.environ.pop(CKPT_ENV, None)
    if not client:
        return run_id
    client.set_terminated(run_id, "FINISHED")
    name = log.get("registered_model_name")
    if name and model_uri:
        alias = str(log.get("registered_model_alias") or DEFAULT_ALIAS)
        point = sweep.current()
        version = register(client, name, run_id, model_uri, None if point else alias)
        if point:  # the alias goes to the best point so far (the last point to end sees them all)
            sweep.follow_best(client, name, alias, run_id, Path(output_dir or ".").resolve().parent)
        where = "" if point else f" (alias {alias!r}: models:/{name}@{alias})"
        print(f"itwinai: registered model {name!r} version {version}{where}", flush=True)
    elif name:
        print(f"itwinai: no model to register as {name!r} (no checkpoint was written)", flush=True)
    print(f"itwinai: run_id={run_id}", flush=True)
    return run_id


def _start_run(cfg: MLOpsConfig, uri: str, ckpt_dir: Path, resuming: bool, output_dir: str | None) -> tuple[Any, str]:
    """The MLflow run: a new one, or the one the resumed checkpoint was written under (one metric history)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # the registry is the tracking store's (the process may have named another)
    with sweep.locked_if_point(output_dir):  # points create the one store together: one creates its tables
        client = MlflowClient(uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    run_file = ckpt_dir / RUN_FILE
    if resuming and run_file.is_file():
        try:
            before = json.loads(run_file.read_text())
            if before.get("tracking_uri") == uri:
                client.update_run(before["run_id"], status="RUNNING")
                print(f"itwinai: tracking {uri}, continuing run {before['run_id']}", flush=True)
                return client, str(before["run_id"])
        except Exception as exc:  # the run is gone or the file unreadable: a new run
            print(f"itwinai: cannot continue the earlier run ({str(exc).splitlines()[0][:120]}): a new run",
                  flush=True)
    log = cfg.logger
    point, tags = sweep.current(), {"mlflow.note.content": str(log.get("description", "")),
                                    "itwinai.config": str(cfg.path)}
    if point:  # a child of the sweep's run, in the sweep's experiment
        folder = Path(output_dir or ".").resolve().parent
        with sweep.locked(folder):
            experiment_id = ensure_experiment(client, cfg.experiment_name, uri)
            parent = sweep.parent_run(client, experiment_id, point[0], f"{folder}#{point[0]}")
        tags |= {sweep.PARENT_TAG: parent, sweep.POINT_TAG: point[1]}
    else:
        experiment_id = ensure_experiment(client, cfg.experiment_name, uri)
    run = client.create_run(experiment_id, run_name=log.get("run_name") or (point[1] if point else None), tags=tags)
    run_id = run.info.run_id
    run_file.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}) + "\n")
    print(f"itwinai: tracking {uri}, experiment {cfg.experiment_name!r}, run {run_id}", flush=True)
    return client, run_id


def _log_params(client, run_id: str, effective: dict[str, Any]) -> None:
    """The effective config as params; a resumed run keeps the values it started with (MLflow refuses changes)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    params = [Param(k, v) for k, v in flatten(effective).items() if k not in have]
    for i in range(0, len(params), 100):  # MLflow's limit per call
        client.log_batch(run_id, params=params[i:i + 100])


def _best_checkpoint(trainer) -> Path | None:
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if best and Path(best).is_file():
        return Path(best)
    return None


def _load_weights(model, ckpt: Path) -> None:
    import torch

    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
