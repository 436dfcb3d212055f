"""`itwinai train`: a Lightning CLI config trained with MLflow tracking."""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from itwinai.config import ItwinaiError, MLOpsConfig, flatten, read_yaml, require_lightning
from itwinai.tracking import artifact_location, ensure_experiment, tracking_uri

CKPT_DIR = "model/checkpoints/best-checkpoint"
CKPT_NAME = "best-checkpoint"
CONFIG_ARTIFACT = "pl-training.yml"


def lightning_config(cfg: MLOpsConfig, input_dir: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    require_lightning(cfg.train_type, "train", cfg.path)
    if cfg.train_path is None:
        raise ItwinaiError(f"{cfg.path}: train.path: the Lightning config file is missing")
    conf = read_yaml(cfg.train_path, "Lightning training config")
    model = conf.get("model")
    if not isinstance(model, dict) or "class_path" not in model:
        raise ItwinaiError(f"{cfg.train_path}: model: needs class_path (and init_args)")
    if input_dir:
        model.setdefault("init_args", {})["data_dir"] = str(Path(input_dir).resolve())
    trainer = conf.setdefault("trainer", {})
    trainer.update({k: v for k, v in overrides.items() if v is not None})
    return conf


CKPT_ENV = "ITWINAI_CHECKPOINTS"


def rank_and_world(num_nodes: int = 1) -> tuple[int, int]:
    """This process's global rank and the world size: from torchrun's (RANK) or SLURM's (srun tasks) environment, or
    from Lightning's own launcher (`devices: 2` on one machine), which starts the other processes with LOCAL_RANK,
    NODE_RANK and WORLD_SIZE set (and the first one has none of them yet when itwinai starts)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)
    if env.get("RANK"):
        rank = int(env["RANK"])
    elif env.get("LOCAL_RANK"):
        rank = int(env.get("NODE_RANK") or 0) * max(1, world // max(1, num_nodes)) + int(env["LOCAL_RANK"])
    else:
        rank = int(env.get("SLURM_PROCID") or 0) if world > 1 else 0
    return rank, world


def train(cfg: MLOpsConfig, input_dir: str | None, output_dir: str | None, uri: str | None,
          overrides: dict[str, Any]) -> str:
    """Train; in a distributed run (DDP over srun tasks) every rank trains, rank 0 alone tracks in MLflow."""
    import mlflow
    from lightning.pytorch.cli import LightningCLI
    from mlflow.tracking import MlflowClient

    conf = lightning_config(cfg, input_dir, overrides)
    rank, world = rank_and_world(int((conf.get("trainer") or {}).get("num_nodes") or 1))
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(uri, output_dir)
    log = cfg.logger
    client, run_id = None, ""
    if rank == 0:
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, cfg.experiment_name, uri)
        run = client.create_run(experiment_id, run_name=log.get("run_name"),
                                tags={"mlflow.note.content": str(log.get("description", "")),
                                      "itwinai.config": str(cfg.path)})
        run_id = run.info.run_id
        print(f"itwinai: tracking {uri}, experiment {cfg.experiment_name!r}, run {run_id}", flush=True)

    # every rank must see the checkpoint rank 0 writes: a shared directory (the output) when distributed; the
    # processes Lightning's launcher starts later inherit the first one's choice (ITWINAI_CHECKPOINTS)
    if os.environ.get(CKPT_ENV):
        ckpt_dir = Path(os.environ[CKPT_ENV])
    elif world > 1 and output_dir:
        ckpt_dir = Path(output_dir, f".itwinai-checkpoints-{os.environ.get('SLURM_JOB_ID', 'job')}")
    else:
        ckpt_dir = Path(tempfile.mkdtemp(prefix="itwinai-"))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    os.environ[CKPT_ENV] = str(ckpt_dir)
    try:
        full = copy.deepcopy(conf)
        trainer = full["trainer"]
        # Lightning logs from rank 0 only, but callbacks such as LearningRateMonitor want a logger on every rank:
        # the others get a scratch store of their own (never logged to), so that they do not race rank 0 in
        # creating the shared one
        rank_uri = uri if rank == 0 else f"sqlite:///{tempfile.gettempdir()}/itwinai-rank{rank}-{os.getpid()}.db"
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
                             "init_args": {"experiment_name": cfg.experiment_name, "tracking_uri": rank_uri,
                                           "run_id": run_id or None, "artifact_location": artifact_location(uri)}}
        callbacks = [c for c in trainer.get("callbacks") or [] if "ModelCheckpoint" not in str(c.get("class_path"))]
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"dirpath": str(ckpt_dir), "filename": CKPT_NAME, "monitor": "val_loss",
                                        "mode": "min", "save_top_k": 1}})
        trainer["callbacks"] = callbacks
        trainer.setdefault("log_every_n_steps", int(log.get("log_every_n_steps", 50)))
        trainer.setdefault("check_val_every_n_epoch", int(log.get("log_every_n_epoch", 1)))
        trainer["default_root_dir"] = str(ckpt_dir)
        argv, sys.argv = sys.argv, sys.argv[:1]  # the config comes from `args`, not our command line
        try:
            cli = LightningCLI(args=full, run=False, save_config_callback=None,
                               parser_kwargs={"exit_on_error": False})
        except (SystemExit, Exception) as exc:  # jsonargparse reports bad configs this way
            if client:
                client.set_terminated(run_id, "FAILED")
            raise ItwinaiError(f"{cfg.train_path}: invalid Lightning config: {str(exc).strip().splitlines()[0]}") from None
        finally:
            sys.argv = argv
        if client:
            client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in flatten(conf).items()][:100])
        try:
            start = time.perf_counter()
            cli.trainer.fit(cli.model)
            elapsed = time.perf_counter() - start
            print(f"itwinai: rank {cli.trainer.global_rank} of world size {cli.trainer.world_size} trained", flush=True)
            samples = len(cli.trainer.train_dataloader.dataset) * cli.trainer.current_epoch
            rate = samples / elapsed if elapsed else 0.0
            ckpt = ckpt_dir / f"{CKPT_NAME}.ckpt"
            cli.trainer.strategy.barrier()
            if ckpt.is_file():
                cli.trainer.test(cli.model, ckpt_path=str(ckpt), verbose=False)
            if client:
                client.log_metric(run_id, "train_samples_per_sec", rate)
                print(f"itwinai: trained {samples} samples in {elapsed:.1f}s ({rate:.0f} samples/s)", flush=True)
                if ckpt.is_file():
                    client.log_artifact(run_id, str(ckpt), CKPT_DIR)
                cfg_file = ckpt_dir / CONFIG_ARTIFACT
                cfg_file.write_text(yaml.safe_dump(conf, sort_keys=False))
                client.log_artifact(run_id, str(cfg_file))
        except BaseException:
            if client:
                client.set_terminated(run_id, "FAILED")
            raise
    finally:
        if rank == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        else:  # the scratch store this rank's logger had
            Path(tempfile.gettempdir(), f"itwinai-rank{rank}-{os.getpid()}.db").unlink(missing_ok=True)
    if not client:
        return run_id
    client.set_terminated(run_id, "FINISHED")
    name = log.get("registered_model_name")
    if name:
        version = register(client, name, run_id)
        print(f"itwinai: registered model {name!r} version {version}", flush=True)
    print(f"itwinai: run_id={run_id}", flush=True)
    return run_id


def register(client, name: str, run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    return client.create_model_version(name, source=source, run_id=run_id).version
