"""`itwinai train|predict`, called by workflow steps as CMD --input IN --output OUT --config CFG."""

from __future__ import annotations

import argparse
import os
import sys

from itwinai.config import ItwinaiError, dotted_settings, load_mlops


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itwinai", description="Train and serve Lightning models with MLflow tracking.",
                                epilog="train also takes settings of the Lightning config in its dotted form: "
                                       "--model.init_args.hidden 16, --trainer.max_epochs=3", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "predict"):
        s = sub.add_parser(name, allow_abbrev=False)
        s.add_argument("--config", required=True, help="MLOps config (train / inference / logger sections)")
        s.add_argument("--input", action="append", help="input dataset directory (repeatable: data, tracking store)")
        s.add_argument("--output", help="output dataset directory (tracking store / predictions)")
        s.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                              "else sqlite inside --output)")
    t = sub.choices["train"]
    t.add_argument("--max-epochs", type=int, help="override trainer.max_epochs")
    t.add_argument("--accelerator", help="override trainer.accelerator (cpu, gpu, auto)")
    t.add_argument("--train-config", help="override train.path (the Lightning config file)")
    t.add_argument("--resume", action="store_true", help="continue from last.ckpt in --output (train.resume: true "
                                                         "in the config does the same)")
    sub.choices["predict"].add_argument("--split", default="test", help="which split of --input to predict")
    return p


def quiet_environment(output: str | None) -> None:
    """No progress bars or telemetry (steps run offline); no git lookups (no git in the image); and where HOME is
    the output directory (cwltool makes it so), caches and configs go elsewhere instead of into the dataset."""
    for key, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                       ("DO_NOT_TRACK", "true"), ("GIT_PYTHON_REFRESH", "quiet")):
        os.environ.setdefault(key, value)
    home = os.environ.get("HOME")
    if output and home and os.path.realpath(home) == os.path.realpath(output):
        import tempfile

        scratch = tempfile.mkdtemp(prefix="itwinai-home-")
        for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR"):
            os.environ.setdefault(key, scratch)


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    quiet_environment(args.output)
    try:
        if extra and args.command != "train":
            raise ItwinaiError(f"unknown argument {extra[0]!r}")
        settings = dotted_settings(extra)  # --model.init_args.hidden 16: LightningCLI's dotted form
        cfg = load_mlops(args.config)
        if getattr(args, "train_config", None):
            from pathlib import Path

            cfg.train_path = Path(args.train_config)
        if args.command == "train":
            from itwinai.train import train

            train(cfg, args.input[0] if args.input else None, args.output, args.tracking_uri,
                  {"max_epochs": args.max_epochs, "accelerator": args.accelerator}, resume=args.resume,
                  settings=settings)
        else:
            if not args.input or not args.output:
                raise ItwinaiError("predict needs --input (data) and --output (where predictions go)")
            from itwinai.predict import predict

            predict(cfg, args.input, args.output, args.tracking_uri, args.split)
    except ItwinaiError as exc:
        print(f"itwinai: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
