"""The model options and loading shared by the benchmarks that judge a trained model
(bench_shift, bench_eligibility, bench_coverage, bench_heldout, bench_stars): --model, --params, --tracking-uri."""

from __future__ import annotations

import argparse


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="models:/..., runs:/..., an MLflow model folder or a .keras file "
                    "(default: models:/<tracking.registered_model>@champion)")  # fmt: skip
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument(
        "--tracking-uri", default=None, help="(default: MLFLOW_TRACKING_URI, else params tracking.uri)"
    )


def load_model(args: argparse.Namespace):
    """(params, model URI, loaded `xpz.serving.batch.Predictor`) for the parsed options. A parameters
    file or a model that cannot be read or loaded raises ConfigError / InputError, which the
    benchmark's `_cli.run_main` turns into its one-line message (exit 2)."""
    from xpz.config import load_config
    from xpz.serving.batch import load_predictor
    from xpz.serving.models import default_tracking_uri

    cfg = load_config(args.params)
    model = args.model or f"models:/{cfg.tracking.registered_model}@champion"
    return cfg, model, load_predictor(model, args.tracking_uri or default_tracking_uri(cfg.tracking.uri))
