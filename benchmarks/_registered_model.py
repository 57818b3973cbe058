"""The model options and loading shared by the benchmarks that judge a trained model
(bench_shift, bench_eligibility, bench_coverage): --model, --params, --tracking-uri."""

from __future__ import annotations

import argparse
import sys


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="models:/..., runs:/..., an MLflow model folder or a .keras file "
                    "(default: models:/<tracking.registered_model>@champion)")  # fmt: skip
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument(
        "--tracking-uri", default=None, help="(default: MLFLOW_TRACKING_URI, else params tracking.uri)"
    )


def load_model(args: argparse.Namespace):
    """(params, model URI, loaded `xpz.serving.batch.Predictor`) for the parsed options; a parameters
    file or a model that cannot be read or loaded ends the benchmark with its one-line message (exit 2)."""
    from xpz.config import ConfigError, load_config
    from xpz.errors import InputError
    from xpz.serving.batch import load_predictor
    from xpz.serving.models import default_tracking_uri

    try:
        cfg = load_config(args.params)
    except ConfigError as error:  # a missing or invalid parameters file
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    model = args.model or f"models:/{cfg.tracking.registered_model}@champion"
    try:
        return cfg, model, load_predictor(model, args.tracking_uri or default_tracking_uri(cfg.tracking.uri))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
