"""Prefect 3 flow `train_pipeline`: validate -> split check -> tune -> train -> evaluate -> register -> promote.

Thin wiring of the library: each task calls one step of `xpz.pipeline` (the same steps `run_pipeline`
and `xpz run` use) or of `xpz.data.stages` / `xpz.tracking`; no ML logic lives here. The same code runs from
`dvc repro` (the `train` stage runs `python flows/train_pipeline.py`), from `dvc exp run`, from a
Prefect deployment (`xpz schedule serve`) and from Python (`train_pipeline(profile="smoke")`).

Orchestration choices (retries, caching, resumable tuning, atomic reports, stops): docs/DEVELOPING.md.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

# A temporary Prefect server (no PREFECT_API_URL) can start slower than 20 s on 2 busy cores (set pre-import).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NONE, TASK_SOURCE, CachePolicy  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.exceptions import TerminationSignal  # noqa: E402
from prefect.runtime import deployment as current_deployment  # noqa: E402
from prefect.runtime import flow_run as current_flow_run  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from xpz import pipeline, servers, tracking  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402
from xpz.interrupts import note_sigterm  # noqa: E402

quiet_telemetry()

REPORTS_DIR = Path("reports")
ARTIFACT_KEY = "xpz-train-summary"
# Steps that talk to a server (MLflow set-up, logging, registration) retry with back-off 2 s, 4 s, 8 s.
server_task = partial(task, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
                      timeout_seconds=600, cache_policy=NONE)  # fmt: skip
local_task = partial(task, cache_policy=NONE)


class DataDigest(CachePolicy):
    """Cache key = sha256 of the dataset file + the validate section (the verdict depends on nothing else)."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return pipeline.reports.validation_key(inputs["data_path"], inputs["cfg"].model_dump(mode="json"))


# --------------------------------------------------------------------------------------- tasks
@task(name="sync-data", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      timeout_seconds=3600, cache_policy=NONE)  # fmt: skip
def sync_data(cfg: Any) -> str:
    """Bring `data/` to the version recorded in data.dvc (`dvc pull`), else generate it."""
    from xpz.data.stages import sync_dataset

    return sync_dataset(cfg.data, log=get_run_logger().info, warn=get_run_logger().warning)


@task(name="validate", cache_policy=DataDigest() + TASK_SOURCE, cache_expiration=timedelta(days=30),
      persist_result=True, timeout_seconds=3600)  # fmt: skip
def validate(data_path: str, cfg: Any) -> dict[str, Any]:
    """The Great Expectations suite; invalid data fails the task with the summary in the logs."""
    from xpz.data.stages import validate_dataset
    from xpz.errors import InputError

    report = validate_dataset(Path(data_path), cfg)
    if not report.success:
        get_run_logger().error("validation failed for %s:\n%s", data_path, report.summary())
        raise InputError(f"{data_path}: the dataset failed validation:\n{report.summary()}")
    get_run_logger().info("validation passed:\n%s", report.summary())
    return {"rows": report.n_rows, "summary": report.summary()}


@local_task(name="split-check", timeout_seconds=3600)
def split_check(cfg: Any, resplit: bool) -> Any:
    """The stored split checked against `split.digests` (`pipeline.checked_splits`)."""
    splits = pipeline.checked_splits(cfg, resplit=resplit, log=get_run_logger().warning)
    get_run_logger().info("splits: %s", {k: len(getattr(splits, k)) for k in ("train", "val", "test")})
    return splits


@server_task(name="start-mlflow-run")
def start_mlflow_run(cfg: Any, splits: Any) -> tuple[Any, str]:
    """This run's MLflow run, tagged with the Prefect ids (a server that is down: retries, each logged)."""
    tr = servers.retrying(lambda: tracking.configure(cfg.tracking), "MLflow set-up", get_run_logger().warning)
    tags = {
        "xpz.kind": "pipeline",
        "xpz.orchestrator": "prefect",
        "prefect.flow_run_id": str(current_flow_run.id or ""),
        "prefect.flow_run_name": str(current_flow_run.name or ""),
        "prefect.deployment_id": str(current_deployment.id or ""),
    }
    run_name = f"pipeline-{cfg.profile}-{current_flow_run.name or 'local'}"
    run_id = pipeline.start_run_step(tr, cfg, splits, run_name, tags)
    get_run_logger().info("MLflow run %s in experiment %s at %s", run_id, tr.experiment_name, tr.tracking_uri)
    return tr, run_id


@local_task(name="tune", retries=1, retry_delay_seconds=5, timeout_seconds=6 * 3600)
def tune(cfg: Any, splits: Any, tr: Any, run_id: str) -> dict[str, Any] | None:
    """keras-tuner search (`pipeline.tune_step`, locked): a retry or a re-run after a crash resumes it."""
    tracking.set_tags(tr, run_id, {"xpz.tuned": str(cfg.tune.enabled).lower()})
    if not cfg.tune.enabled:
        get_run_logger().info("tune.enabled is false: training the %s architecture", cfg.model.architecture)
        return None
    result = pipeline.tune_step(splits, cfg, tr, run_id, lock=True)
    get_run_logger().info("tuning in %s: %d trials, best %s: %s", result.directory, len(result.trials),
                          result.best_trial_id, result.best_hyperparameters)  # fmt: skip
    return dict(result.best_hyperparameters)


@local_task(name="train", timeout_seconds=12 * 3600)
def train(cfg: Any, splits: Any, hyperparameters: dict[str, Any] | None, tr: Any, run_id: str) -> Any:
    """The final model (`pipeline.train_step`: hyperparameters, loss curves, timing logged to the run)."""
    result = pipeline.train_step(splits, cfg, hyperparameters, tr, run_id)
    get_run_logger().info("trained %d epochs in %.1f s (%.0f samples/s)", result.epochs, result.seconds,
                          result.samples_per_s)  # fmt: skip
    return result


@local_task(name="evaluate", timeout_seconds=3600)
def evaluate(cfg: Any, splits: Any, trained: Any) -> Any:
    """Test metrics, per-bin table, baselines, figures (`pipeline.evaluate_step`; logged separately)."""
    evaluation = pipeline.evaluate_step(trained.model, splits, cfg, trained.history)
    shown = {k: round(v, 5) for k, v in evaluation.metrics.items() if k.startswith("test_")}
    get_run_logger().info("test metrics: %s", shown)
    return evaluation


@server_task(name="log-evaluation")
def log_evaluation(tr: Any, run_id: str, evaluation: Any) -> None:
    """Metrics (per-bin included), per-bin tables, predictions and figures into the MLflow run."""
    tracking.log_evaluation(tr, run_id, evaluation, close_figures=False)


@server_task(name="log-model")
def log_model(tr: Any, run_id: str, trained: Any, splits: Any) -> Any:
    """The model as the run's pyfunc LoggedModel (`pipeline.log_model_step`)."""
    return pipeline.log_model_step(tr, run_id, trained.model, splits, trained.hyperparameters)


@server_task(name="register")
def register(tr: Any, run_id: str, logged_model: Any, metrics: dict[str, float]) -> Any:
    """New registry version, alias `challenger`, and the champion decision (`pipeline.register_step`).

    Retry-safe: when this run already has a decided version (a retry after a lost response), that
    version is reported instead of registering a second one.
    """
    registration = pipeline.register_step(tr, run_id, logged_model, metrics, reuse=True)
    get_run_logger().info("registered %s version %s: %s (%s)", tr.registered_model, registration.version,
                          registration.decision, registration.reason)  # fmt: skip
    return registration


@server_task(name="promote")
def promote(tr: Any, registration: Any) -> dict[str, str]:
    """Read the aliases back after the decision (the registry is the source of truth) and report them.

    The decision itself is made atomically inside `register` (the champion is re-read right before
    the alias moves); a later, better run may have taken `champion` since: that is reported, not undone.
    """
    aliases = tracking.aliases(tr)
    champion = aliases.get(tracking.CHAMPION)
    if registration.promoted and champion != registration.version:
        get_run_logger().warning(
            "version %s was promoted, champion is now version %s", registration.version, champion
        )
    get_run_logger().info("aliases of %s: %s", tr.registered_model, aliases)
    return aliases


@server_task(name="end-mlflow-run", timeout_seconds=None)
def end_mlflow_run(tr: Any, run_id: str, status: str, metrics: dict[str, float] | None = None) -> None:
    if metrics:
        tracking.log_metrics(tr, run_id, metrics)
    tracking.end_run(tr, run_id, status)


@local_task(name="write-reports", timeout_seconds=600)
def write_reports(result: Any, reports_dir: str, extra: dict[str, Any]) -> dict[str, str]:
    """DVC outputs (`pipeline.write_reports`: metrics.json, bin_table.csv/.md, run.json, figures/*.png)."""
    return {k: str(v) for k, v in pipeline.write_reports(reports_dir, result, extra).items()}


@local_task(name="summary-artifact", retries=2, retry_delay_seconds=2)
def summary_artifact(evaluation: Any, info: dict[str, Any]) -> None:
    """A Prefect markdown artifact: the MLflow run id, the registry decision and the per-bin table."""
    create_markdown_artifact(
        markdown=pipeline.summary_markdown(evaluation, info),
        key=ARTIFACT_KEY,
        description=f"xpz: MLflow run {info['mlflow_run_id']}, per-bin table and registry decision",
    )


# ---------------------------------------------------------------------------------------- flow
@flow(name="train_pipeline", log_prints=False, timeout_seconds=24 * 3600)
def train_pipeline(
    params: str = "params.yaml",
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    sync: bool = False,
    reports_dir: str = str(REPORTS_DIR),
) -> dict[str, Any]:
    """Validate -> split check -> tune -> train -> evaluate -> log -> register -> promote.

    params: the parameters file; profile: a `profiles` entry (default: XPZ_PROFILE, then params);
    overrides: dotted keys, e.g. {"train.epochs": 2}; sync: first bring the data to its DVC version
    and re-split when needed (scheduled runs); reports_dir: where the DVC metrics/plots go.
    """
    import time

    from xpz.config import load_config

    t0, stopped = time.perf_counter(), note_sigterm()  # a SIGTERM, even one a library hides
    cfg = load_config(params, profile=profile, overrides=overrides or {})
    get_run_logger().info("profile %s, params %s, overrides %s", cfg.profile, params, overrides or {})
    if sync:
        sync_data(cfg)
    checked = validate(str(cfg.data.path), cfg.validation)
    splits = split_check(cfg, resplit=sync)

    tr, run_id = start_mlflow_run(cfg, splits)
    try:
        hyperparameters = tune(cfg, splits, tr, run_id)
        trained = train(cfg, splits, hyperparameters, tr, run_id)
        evaluation = evaluate(cfg, splits, trained)
        log_evaluation(tr, run_id, evaluation)
        logged = log_model(tr, run_id, trained, splits)
        registration = register(tr, run_id, logged, evaluation.metrics)
        aliases = promote(tr, registration)
    except BaseException as err:
        if not (isinstance(err, (KeyboardInterrupt, TerminationSignal)) or stopped()):
            end_mlflow_run(tr, run_id, "FAILED")
            raise
        tracking.end_run(tr, run_id, "KILLED")  # Ctrl-C or SIGTERM; directly: no new task while stopping
        if isinstance(err, Exception):  # a SIGTERM whose exception tf.data turned into another error
            raise TerminationSignal(15) from err  # SIGTERM
        raise
    end_mlflow_run(tr, run_id, "FINISHED", {"pipeline_seconds": time.perf_counter() - t0})

    result = pipeline.PipelineResult.from_steps(
        tr, run_id, trained, evaluation, logged, registration, champion_version=aliases.get("champion")
    )
    info = pipeline.reports.run_info(result, cfg, aliases, checked["rows"],
                                     prefect_flow_run_id=str(current_flow_run.id or ""))  # fmt: skip
    extra_keys = ("mlflow_run_url", "decision", "reason", "aliases", "prefect_flow_run_id")
    write_reports(result, reports_dir, {k: info[k] for k in extra_keys})
    summary_artifact(evaluation, info)
    get_run_logger().info("MLflow run %s: version %s %s, champion version %s", run_id, registration.version,
                          registration.decision, result.champion_version)  # fmt: skip
    return info


# ------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """`python flows/train_pipeline.py [--params P] [--profile NAME] [-S key=value ...] [--sync]`
    (the DVC `train` stage). Exit 0 when the flow run is Completed, 1 otherwise."""
    from xpz.cli.flow import run_flow_from_argv

    return run_flow_from_argv(train_pipeline, argv, default_reports_dir=str(REPORTS_DIR))


if __name__ == "__main__":
    sys.exit(main())
