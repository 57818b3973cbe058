"""Prefect 3 flow `train_pipeline`: validate -> split check -> tune -> train -> evaluate -> register -> promote.

Thin wiring of the library: each task calls one step of `xpz.pipeline` (the same steps `run_pipeline`
and `xpz run` use) or of `xpz.data_stages` / `xpz.tracking`; no ML logic lives here. The same code runs from
`dvc repro` (the `train` stage runs `python flows/train_pipeline.py`), from `dvc exp run`, from a
Prefect deployment (`xpz schedule serve`) and from Python (`train_pipeline(profile="smoke")`).

Orchestration choices:
- steps that talk to a server (MLflow run set-up, logging, registration, `dvc pull`) retry with
  exponential back-off; registration is guarded so that a retry never creates a second version;
- validation is cached on the dataset's content digest + the `validate` section + the task's code
  (the verdict is a pure function of those); nothing else is cached (training is not deterministic
  across machines and its outputs live in MLflow, not in Prefect results);
- invalid data fails the flow with the validation summary in its logs before an MLflow run exists,
  so nothing is registered and the champion is untouched;
- tuning runs in a directory keyed on the search (search space, tuning settings, split digests):
  re-running after a crash resumes that search; a file lock serialises two runs on the same search
  (the second resumes a finished search instead of writing the same oracle files);
- each run has its own MLflow run id and temporary folders; the evaluation outputs for DVC
  (`pipeline.write_reports`: `reports/metrics.json`, `reports/bin_table.csv|.md`, `reports/run.json`;
  plus `reports/figures/*.png`) are written atomically once the model is registered;
- a Prefect markdown artifact carries the per-bin table, the MLflow run id and the registry decision.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

# Without PREFECT_API_URL Prefect starts a temporary local server; on a busy 2-core machine its
# start-up can exceed Prefect's 20 s default (set before prefect is imported: settings load then).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NONE, TASK_SOURCE, CachePolicy  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.runtime import deployment as current_deployment  # noqa: E402
from prefect.runtime import flow_run as current_flow_run  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from xpz.env import quiet_telemetry  # noqa: E402
from xpz.io import write_text_atomic  # noqa: E402

quiet_telemetry()

SERVER_RETRIES = 3
SERVER_BACKOFF = exponential_backoff(backoff_factor=2)  # 2 s, 4 s, 8 s (with jitter)
SERVER_TIMEOUT_S = 600
ARTIFACT_KEY = "xpz-train-summary"
REPORTS_DIR = Path("reports")


# ------------------------------------------------------------------------------------- helpers
def file_digest(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (the validation cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class DataDigest(CachePolicy):
    """Cache key = sha256 of the dataset file + the validate section (the verdict depends on nothing else)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        path = Path(inputs["data_path"])
        if not path.is_file():
            return None
        section = inputs["cfg"].model_dump(mode="json")
        return _json_digest({"data": file_digest(path), "validate": section})


# --------------------------------------------------------------------------------------- tasks
@task(
    name="sync-data",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    timeout_seconds=3600,
    cache_policy=NONE,
)
def sync_data(cfg: Any) -> str:
    """Bring `data/` to the version recorded in data.dvc (`dvc pull`), else generate it (data stages)."""
    logger = get_run_logger()
    path = Path(cfg.data.path)
    if Path(".dvc").is_dir() and Path("data.dvc").is_file():
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "pull", "-q", "data.dvc"],
            capture_output=True, text=True, timeout=3000,
        )  # fmt: skip
        if done.returncode == 0:
            logger.info("dvc pull data.dvc: %s is at the recorded version", path)
            return "dvc"
        if not path.exists():
            raise RuntimeError(f"dvc pull data.dvc failed and {path} is missing:\n{done.stderr[-2000:]}")
        logger.warning("dvc pull data.dvc failed; using the local %s:\n%s", path, done.stderr[-1000:])
        return "local"
    if path.exists():
        logger.info("not a DVC checkout: using the local %s", path)
        return "local"
    from xpz.data_stages import generate_dataset

    rows = generate_dataset(cfg.data, path, progress=False)
    logger.info("generated %d galaxies to %s", rows, path)
    return "generated"


@task(
    name="validate",
    cache_policy=DataDigest() + TASK_SOURCE,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    timeout_seconds=3600,
)
def validate(data_path: str, cfg: Any) -> dict[str, Any]:
    """The Great Expectations suite; invalid data fails the task with the summary in the logs."""
    from xpz.data_stages import validate_dataset
    from xpz.errors import InputError

    logger = get_run_logger()
    report = validate_dataset(Path(data_path), cfg)
    summary = report.summary()
    if not report.success:
        logger.error("validation failed for %s:\n%s", data_path, summary)
        raise InputError(f"{data_path}: the dataset failed validation:\n{summary}")
    logger.info("validation passed:\n%s", summary)
    return {"rows": report.n_rows, "summary": summary}


@task(name="split-check", cache_policy=NONE, timeout_seconds=3600)
def split_check(cfg: Any, resplit: bool) -> Any:
    """Load the stored split (`pipeline.load_splits`) and check it against `split.digests`.

    With `resplit` (scheduled runs that just synced the data) a missing or stale split is rewritten
    by the split stage; otherwise it is an error: the DVC `split` stage owns it.
    """
    from xpz import pipeline
    from xpz.data_stages import split_dataset
    from xpz.errors import InputError

    logger = get_run_logger()
    try:
        splits = pipeline.load_splits(cfg)
        digests_path = Path(cfg.split.digests)
        recorded = json.loads(digests_path.read_text()).get("digests", {}) if digests_path.exists() else None
        if recorded is not None and recorded != splits.digests:
            raise InputError(f"{digests_path}: recorded digests differ from {cfg.split.path}; re-run `xpz data split`")
    except InputError as err:
        if not resplit:
            logger.error("%s", err)
            raise
        logger.warning("%s: writing a new split", err)
        split_dataset(Path(cfg.data.path), cfg.split)
        splits = pipeline.load_splits(cfg)
    logger.info("splits: %s", {k: len(getattr(splits, k)) for k in ("train", "val", "test")})
    return splits


@task(
    name="start-mlflow-run",
    retries=SERVER_RETRIES,
    retry_delay_seconds=SERVER_BACKOFF,
    timeout_seconds=SERVER_TIMEOUT_S,
    cache_policy=NONE,
)
def start_mlflow_run(cfg: Any, splits: Any) -> tuple[Any, str]:
    """Configure MLflow, create this run's MLflow run with the Prefect ids as tags, log the context
    (params, lineage tags, dataset inputs: `pipeline.log_context`)."""
    from xpz import pipeline, tracking

    tr = tracking.configure(cfg.tracking)
    tags = {
        "xpz.kind": "pipeline",
        "xpz.orchestrator": "prefect",
        "prefect.flow_run_id": str(current_flow_run.id or ""),
        "prefect.flow_run_name": str(current_flow_run.name or ""),
        "prefect.deployment_id": str(current_deployment.id or ""),
    }
    run_name = f"pipeline-{cfg.profile}-{current_flow_run.name or 'local'}"
    run_id = tracking.start_run(tr, run_name=run_name, tags=tags)
    try:
        pipeline.log_context(tr, run_id, cfg, splits)
        tracking.log_metrics(tr, run_id, {f"n_{k}": len(getattr(splits, k)) for k in ("train", "val", "test")})
    except BaseException:
        tracking.end_run(tr, run_id, "FAILED")
        raise
    get_run_logger().info("MLflow run %s in experiment %s at %s", run_id, tr.experiment_name, tr.tracking_uri)
    return tr, run_id


@task(name="tune", retries=1, retry_delay_seconds=5, timeout_seconds=6 * 3600, cache_policy=NONE)
def tune(cfg: Any, splits: Any, tr: Any, run_id: str) -> dict[str, Any] | None:
    """keras-tuner search (`pipeline.tune_step`) in a directory keyed on the search: a retry or a
    re-run after a crash resumes it; a file lock keeps two runs from writing the same oracle."""
    from filelock import FileLock

    from xpz import pipeline, tracking

    logger = get_run_logger()
    tracking.set_tags(tr, run_id, {"xpz.tuned": str(cfg.tune.enabled).lower()})
    if not cfg.tune.enabled:
        logger.info("tune.enabled is false: training the %s architecture", cfg.model.architecture)
        return None
    from xpz.tune import search_directory

    directory = search_directory(cfg, splits.digests)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        result = pipeline.tune_step(splits, cfg, tr, run_id)
    logger.info("tuning in %s: %d trials, best %s: %s", directory, len(result.trials), result.best_trial_id,
                result.best_hyperparameters)  # fmt: skip
    return dict(result.best_hyperparameters)


@task(name="train", timeout_seconds=12 * 3600, cache_policy=NONE)
def train(cfg: Any, splits: Any, hyperparameters: dict[str, Any] | None, tr: Any, run_id: str) -> Any:
    """The final model (`pipeline.train_step`: hyperparameters, loss curves, timing logged to the run)."""
    from xpz import pipeline

    result = pipeline.train_step(splits, cfg, hyperparameters, tr, run_id)
    get_run_logger().info(
        "trained %d epochs in %.1f s (%.0f samples/s)", result.epochs, result.seconds, result.samples_per_s
    )
    return result


@task(name="evaluate", timeout_seconds=3600, cache_policy=NONE)
def evaluate(cfg: Any, splits: Any, trained: Any) -> Any:
    """Test metrics, per-bin table, baselines, figures (`pipeline.evaluate_step`; logged separately)."""
    from xpz import pipeline

    evaluation = pipeline.evaluate_step(trained.model, splits, cfg, trained.history)
    shown = {k: round(v, 5) for k, v in evaluation.metrics.items() if k.startswith("test_")}
    get_run_logger().info("test metrics: %s", shown)
    return evaluation


@task(
    name="log-evaluation",
    retries=SERVER_RETRIES,
    retry_delay_seconds=SERVER_BACKOFF,
    timeout_seconds=SERVER_TIMEOUT_S,
    cache_policy=NONE,
)
def log_evaluation(tr: Any, run_id: str, evaluation: Any) -> None:
    """Metrics (per-bin included), per-bin tables, predictions and figures into the MLflow run."""
    from xpz import tracking

    tracking.log_evaluation(tr, run_id, evaluation, close_figures=False)


@task(
    name="log-model",
    retries=SERVER_RETRIES,
    retry_delay_seconds=SERVER_BACKOFF,
    timeout_seconds=SERVER_TIMEOUT_S,
    cache_policy=NONE,
)
def log_model(tr: Any, run_id: str, trained: Any, splits: Any) -> Any:
    """The model as the run's pyfunc LoggedModel (`pipeline.log_model_step`)."""
    from xpz import pipeline

    return pipeline.log_model_step(tr, run_id, trained.model, splits, trained.hyperparameters)


@task(
    name="register",
    retries=SERVER_RETRIES,
    retry_delay_seconds=SERVER_BACKOFF,
    timeout_seconds=SERVER_TIMEOUT_S,
    cache_policy=NONE,
)
def register(tr: Any, run_id: str, logged_model: Any, metrics: dict[str, float]) -> Any:
    """New registry version, alias `challenger`, and the champion decision (`pipeline.register_step`).

    Retry-safe: when this run already has a decided version (a retry after a lost response), that
    version is reported instead of registering a second one.
    """
    from xpz import pipeline, tracking

    logger = get_run_logger()
    client = tr.client
    if client.search_registered_models(f"name = '{tr.registered_model}'"):
        mine = client.search_model_versions(f"name = '{tr.registered_model}' and run_id = '{run_id}'")
        decided = [mv for mv in mine if (mv.tags or {}).get("xpz.decision")]
        if decided:
            mv, tags = decided[0], decided[0].tags
            logger.warning("run %s already has version %s (a retried registration): reusing it", run_id, mv.version)
            aliases = client.get_registered_model(tr.registered_model).aliases or {}
            champion = aliases.get(tracking.CHAMPION)
            return tracking.Registration(
                version=str(mv.version),
                champion_version=str(champion),
                promoted=tags.get("xpz.decision") == "promoted",
                decision=tags.get("xpz.decision", ""),
                reason=tags.get("xpz.decision_reason", ""),
                candidate_value=float(tags.get("xpz.candidate_value", "nan")),
                champion_value=float(tags["xpz.champion_value"]) if tags.get("xpz.champion_value") else None,
                previous_champion=tags.get("xpz.champion_version_before") or None,
                split_comparison=tags.get("xpz.split_comparison", ""),
            )
    registration = pipeline.register_step(tr, run_id, logged_model, metrics)
    logger.info("registered %s version %s: %s (%s)", tr.registered_model, registration.version,
                registration.decision, registration.reason)  # fmt: skip
    return registration


@task(
    name="promote",
    retries=SERVER_RETRIES,
    retry_delay_seconds=SERVER_BACKOFF,
    timeout_seconds=SERVER_TIMEOUT_S,
    cache_policy=NONE,
)
def promote(tr: Any, registration: Any) -> dict[str, str]:
    """Read the aliases back after the decision (the registry is the source of truth) and report them.

    The decision itself is made atomically inside `register` (the champion is re-read right before
    the alias moves); a later, better run may have taken `champion` since: that is reported, not undone.
    """
    from xpz import tracking

    logger = get_run_logger()
    aliases = {k: str(v) for k, v in (tr.client.get_registered_model(tr.registered_model).aliases or {}).items()}
    champion = aliases.get(tracking.CHAMPION)
    if registration.promoted and champion != registration.version:
        logger.warning("version %s was promoted, champion is now version %s", registration.version, champion)
    logger.info("aliases of %s: %s", tr.registered_model, aliases)
    return aliases


@task(name="end-mlflow-run", retries=SERVER_RETRIES, retry_delay_seconds=SERVER_BACKOFF, cache_policy=NONE)
def end_mlflow_run(tr: Any, run_id: str, status: str, metrics: dict[str, float] | None = None) -> None:
    from xpz import tracking

    if metrics:
        tracking.log_metrics(tr, run_id, metrics)
    tracking.end_run(tr, run_id, status)


@task(name="write-reports", timeout_seconds=600, cache_policy=NONE)
def write_reports(result: Any, reports_dir: str, extra: dict[str, Any]) -> dict[str, str]:
    """DVC outputs: `pipeline.write_reports` (metrics.json, bin_table.csv/.md, run.json) + figures/*.png.

    Each file is replaced atomically; a lock keeps two runs finishing together from interleaving
    (the last run to finish owns the whole set)."""
    from filelock import FileLock

    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".write.lock")):
        return _write_reports(result, out, extra)


def _write_reports(result: Any, out: Path, extra: dict[str, Any]) -> dict[str, str]:
    from xpz import pipeline

    paths = {k: str(v) for k, v in pipeline.write_reports(out, result).items()}
    run_json = out / "run.json"
    doc = json.loads(run_json.read_text())
    doc.update(extra)
    write_text_atomic(run_json, json.dumps(doc, indent=2, default=str) + "\n")
    figures = out / "figures"
    staging = Path(tempfile.mkdtemp(prefix=".figures.", dir=out))
    staging.chmod(0o755)
    old = out / f".figures.old.{os.getpid()}"
    try:
        for name, fig in result.evaluation.figures.items():
            fig.savefig(staging / f"{name}.png", dpi=80)
        if figures.exists():
            figures.rename(old)
        staging.rename(figures)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    paths["figures"] = str(figures)
    return paths


@task(name="summary-artifact", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def summary_artifact(evaluation: Any, info: dict[str, Any]) -> None:
    """A Prefect markdown artifact: the MLflow run id, the registry decision and the per-bin table."""
    metrics = evaluation.metrics
    rows = [
        ("test MAE", "test_mae"), ("sigma_NMAD", "test_sigma_nmad"), ("outlier fraction", "test_outlier_fraction"),
        ("bias", "test_bias"), ("worst per-bin bias (z <= 0.5)", "test_worst_bin_bias"),
        ("68% interval coverage", "test_coverage_68"), ("baseline mean: test MAE", "baseline_mean/test_mae"),
        ("baseline kNN: test MAE", "baseline_knn/test_mae"),
    ]  # fmt: skip
    where = info.get("mlflow_run_url") or info["tracking_uri"]
    lines = [
        "# xpz training run",
        "",
        f"- MLflow run id: `{info['mlflow_run_id']}` ({where})",
        f"- registered model `{info['registered_model']}` version **{info['model_version']}**: "
        f"{info['decision']} ({info['reason']})",
        f"- champion: version {info['champion_version']}; aliases {info['aliases']}",
        f"- profile `{info['profile']}`, {info['rows']} validated rows",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {label} | {metrics[key]:.4f} |" for label, key in rows if key in metrics],
        "",
        "## Per-bin errors on the test split",
        "",
        evaluation.table_markdown(),
    ]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=ARTIFACT_KEY,
        description=f"xpz: MLflow run {info['mlflow_run_id']}, per-bin table and registry decision",
    )


# ---------------------------------------------------------------------------------------- flow
def _run_url(tr: Any, run_id: str) -> str | None:
    uri = tr.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{tr.experiment_id}/runs/{run_id}"
    return None


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
    from xpz.pipeline import PipelineResult

    t0 = time.perf_counter()
    logger = get_run_logger()
    cfg = load_config(params, profile=profile, overrides=overrides or {})
    logger.info("profile %s, params %s, overrides %s", cfg.profile, params, overrides or {})
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
    except BaseException:
        end_mlflow_run(tr, run_id, "FAILED")
        raise
    end_mlflow_run(tr, run_id, "FINISHED", {"pipeline_seconds": time.perf_counter() - t0})

    result = PipelineResult.from_steps(
        tr, run_id, trained, evaluation, logged, registration, champion_version=aliases.get("champion")
    )
    info = {
        "mlflow_run_id": run_id,
        "mlflow_run_url": _run_url(tr, run_id),
        "tracking_uri": tr.tracking_uri,
        "experiment": tr.experiment_name,
        "registered_model": tr.registered_model,
        "model_version": registration.version,
        "decision": registration.decision,
        "reason": registration.reason,
        "champion_version": result.champion_version,
        "aliases": aliases,
        "profile": cfg.profile,
        "rows": checked["rows"],
        "prefect_flow_run_id": str(current_flow_run.id or ""),
    }
    write_reports(result, reports_dir, {k: info[k] for k in ("mlflow_run_url", "decision", "reason", "aliases", "prefect_flow_run_id")})
    summary_artifact(evaluation, info)
    logger.info("MLflow run %s: version %s %s, champion version %s", run_id, registration.version,
                registration.decision, result.champion_version)  # fmt: skip
    return info


# ------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """`python flows/train_pipeline.py [--params P] [--profile NAME] [-S key=value ...] [--sync]`
    (the DVC `train` stage). Exit 0 when the flow run is Completed, 1 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the xpz train_pipeline flow once.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sync", action="store_true", help="dvc pull the data and re-split if needed first")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR))
    args = parser.parse_args(argv)
    from xpz.cli_common import parse_overrides
    from xpz.config import ConfigError

    try:
        overrides = parse_overrides(args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    state = train_pipeline(
        params=args.params, profile=args.profile, overrides=overrides or None, sync=args.sync,
        reports_dir=args.reports_dir, return_state=True,
    )  # fmt: skip
    if not state.is_completed():
        print(f"train_pipeline: flow run {state.name}: {state.message}", file=sys.stderr)
        return 1
    info = state.result()
    print(json.dumps({k: info.get(k) for k in ("mlflow_run_id", "model_version", "decision", "champion_version")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
