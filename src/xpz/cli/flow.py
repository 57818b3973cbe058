"""The command line of the training flow (`python flows/train_pipeline.py ...`, the DVC `train` stage)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from xpz.cli.common import parse_overrides
from xpz.config import ConfigError


def flow_arguments(argv: list[str] | None, default_reports_dir: str = "reports") -> argparse.Namespace:
    """Parse `[--params P] [--profile NAME] [-S key=value ...] [--sync] [--reports-dir D]`; a bad
    override exits with status 2 and one message (argparse's `error`)."""
    parser = argparse.ArgumentParser(description="Run the xpz train_pipeline flow once.")
    parser.add_argument(
        "--params", default="params.yaml", metavar="PATH",
        help="the parameters file (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", default=None, metavar="NAME",
        help="a `profiles` entry of the parameters file, e.g. smoke (default: XPZ_PROFILE, then the "
        "file's `profile` key)",
    )  # fmt: skip
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one parameter (dotted key, e.g. -S train.epochs=2); repeatable",
    )  # fmt: skip
    parser.add_argument("--sync", action="store_true", help="dvc pull the data and re-split if needed first")
    parser.add_argument(
        "--reports-dir", default=default_reports_dir, metavar="DIR",
        help="where the DVC metrics, plots and run.json are written (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        args.overrides = parse_overrides(args.overrides) or None
    except ConfigError as err:
        parser.error(str(err))
    return args


def ephemeral_timeout_message() -> str:
    import os

    limit = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20 (Prefect's default)")
    return (
        f"error: Prefect's temporary server did not start within {limit} s (no PREFECT_API_URL is set, "
        "so Prefect starts one per run); on a slow or busy machine raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (e.g. 180), or start a real server "
        "(`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api"
    )


def preflight(params: str, profile: str | None, overrides: dict[str, Any] | None) -> str | None:
    """The one-line error for a Prefect server (PREFECT_API_URL) or MLflow tracking server (params /
    MLFLOW_TRACKING_URI) that is down or refuses the credentials; None when both answer (or are local)."""
    import os

    from xpz.config import load_config
    from xpz.servers import ServerError, check_mlflow, check_prefect
    from xpz.tracking.store import resolve_uri

    try:
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")
        if url:
            auth = PREFECT_API_AUTH_STRING.value()  # the variable or the Prefect profile
            check_prefect(url, auth=getattr(auth, "get_secret_value", lambda: auth)())
        cfg = load_config(params, profile=profile, overrides=overrides or {})
        check_mlflow(resolve_uri(cfg.tracking))
    except (ServerError, ConfigError) as err:
        return f"error: {err}"
    return None


def run_flow_from_argv(
    flow: Callable[..., Any], argv: list[str] | None, default_reports_dir: str = "reports"
) -> int:
    """Run `flow` once with options from `argv`: 0 when its flow run is Completed (its summary as one
    JSON line on stdout), 1 otherwise (the state's message on stderr), 2 when the params are invalid or
    a server is down or refuses the credentials (checked before the flow starts: `preflight`)."""
    args = flow_arguments(argv, default_reports_dir)
    problem = preflight(args.params, args.profile, args.overrides)
    if problem:  # fail fast: before Prefect or MLflow retry for minutes
        print(problem, file=sys.stderr)
        return 2
    from xpz.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_raises

    try:
        with terminate_raises():  # SIGTERM unwinds like Ctrl-C: the MLflow run ends KILLED, temp files go
            state = flow(
                params=args.params, profile=args.profile, overrides=args.overrides, sync=args.sync,
                reports_dir=args.reports_dir, return_state=True,
            )  # fmt: skip
    except Terminated:
        print("error: train_pipeline stopped by SIGTERM", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:  # Ctrl-C: one line and 130, as `xpz run` (the MLflow run ended KILLED)
        print("error: train_pipeline stopped by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as err:  # Prefect's temporary server (no PREFECT_API_URL) did not come up in time
        if "ephemeral Prefect API server" not in str(err):
            raise
        print(ephemeral_timeout_message(), file=sys.stderr)
        return 2
    if not state.is_completed():
        print(f"train_pipeline: flow run {state.name}: {state.message}", file=sys.stderr)
        return 1
    info = state.result()
    print(
        json.dumps(
            {k: info.get(k) for k in ("mlflow_run_id", "model_version", "decision", "champion_version")}
        )
    )
    return 0
