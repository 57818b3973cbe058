"""The main job: splits -> tune -> train -> evaluate -> log -> register -> promote.

Thin wiring: the ML lives in `xpz.model.tune`, `xpz.model.train`, `xpz.model.evaluate`; MLflow in `xpz.tracking`. Each
step is a function of its own (the CLI, DVC stages and Prefect flows call them separately or through
`run_pipeline`). One pipeline execution is one MLflow run; each tuning trial is a run nested under it.
Nothing here keeps global state: the MLflow run id is passed explicitly from step to step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpz import tracking

if TYPE_CHECKING:
    from xpz.config import Config
    from xpz.data.split import Splits
    from xpz.model.evaluate import Evaluation
    from xpz.model.train import TrainResult
    from xpz.model.tune import TuneResult

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class PipelineResult:
    run_id: str
    model_version: str | None  # None when registration was skipped
    champion_version: str | None
    promoted: bool
    evaluation: Evaluation
    model_uri: str | None = None  # models:/<model_id> of the logged model
    registration: tracking.Registration | None = None
    hyperparameters: Mapping[str, Any] | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None

    @classmethod
    def from_steps(
        cls,
        tr: tracking.Tracking,
        run_id: str,
        trained: TrainResult,
        evaluation: Evaluation,
        logged: Any,
        registration: tracking.Registration | None,
        champion_version: str | None = None,
    ) -> PipelineResult:
        """Assemble the result of the steps (the flow and `run_pipeline` both end here)."""
        return cls(
            run_id=run_id,
            model_version=registration.version if registration else None,
            champion_version=champion_version or (registration.champion_version if registration else None),
            promoted=bool(registration and registration.promoted),
            evaluation=evaluation,
            model_uri=logged.model_uri,
            registration=registration,
            hyperparameters=trained.hyperparameters,
            tracking_uri=tr.tracking_uri,
            experiment_id=tr.experiment_id,
        )


# ----------------------------------------------------------------------------------------- steps


def load_splits(cfg: Config) -> Splits:
    """The stored train/val/test split of the dataset (`data.path` joined with `split.path`)."""
    from xpz.data.split import load_splits as _load

    return _load(cfg.data.path, cfg.split.path)


def checked_splits(cfg: Config, resplit: bool = False, log: Echo = _quiet) -> Splits:
    """The stored split, checked against the digests recorded in `split.digests`.

    With `resplit` (scheduled runs that just synced the data) a missing or stale split is rewritten by
    the split stage; otherwise it raises InputError: the DVC `split` stage owns it.
    """
    import json

    from xpz.data.stages import split_dataset
    from xpz.errors import InputError

    try:
        splits = load_splits(cfg)
        digests_path = Path(cfg.split.digests)
        recorded = json.loads(digests_path.read_text()).get("digests", {}) if digests_path.exists() else None
        if recorded is not None and recorded != splits.digests:
            raise InputError(
                f"{digests_path}: recorded digests differ from {cfg.split.path}; re-run `xpz data split`"
            )
    except InputError as err:
        if not resplit:
            raise
        log(f"{err}: writing a new split")
        split_dataset(Path(cfg.data.path), cfg.split)
        splits = load_splits(cfg)
    return splits


def start_run_step(
    tr: tracking.Tracking, cfg: Config, splits: Splits, run_name: str, tags: Mapping[str, str]
) -> str:
    """A new MLflow run with its context logged (params, lineage, dataset inputs, split sizes)."""
    run_id = tracking.start_run(tr, run_name=run_name, tags=dict(tags))
    try:
        log_context(tr, run_id, cfg, splits)
        tracking.log_metrics(
            tr, run_id, {f"n_{k}": len(getattr(splits, k)) for k in ("train", "val", "test")}
        )
    except BaseException:
        tracking.end_run(tr, run_id, "FAILED")
        raise
    return run_id


def tune_step(
    splits: Splits,
    cfg: Config,
    tr: tracking.Tracking | None = None,
    run_id: str | None = None,
    directory: Path | str | None = None,
    lock: bool = False,
) -> TuneResult:
    """keras-tuner search (resumable in `directory`, default `tune.directory`); with a run id, each
    finished trial becomes a nested MLflow run and the best hyperparameters are logged as `best.*`.

    `lock`: hold a file lock on the search folder (`<folder>.lock`) so that two runs of the same
    search never write the same oracle files (the second resumes the finished search). The run is
    tagged `xpz.tune_search` (the folder), `xpz.host` and `xpz.pid`; RUNNING runs of the same search
    whose process is gone (a killed `xpz tune`) are marked KILLED (`tracking.close_orphaned_runs`)."""
    import contextlib

    from filelock import FileLock

    from xpz.model.tune import search_directory, tune

    hook = tracking.trial_logger(tr, run_id) if tr is not None and run_id else None
    folder = search_directory(cfg, splits.digests, directory)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if tr is not None and run_id:  # a search that resumes closes the runs of killed earlier attempts
        search = str(Path(folder).resolve())
        tracking.set_tags(tr, run_id, {"xpz.tune_search": search, **tracking.process_tags()})
        tracking.close_orphaned_runs(tr, "xpz.tune_search", search, exclude=run_id)
    with FileLock(str(folder) + ".lock") if lock else contextlib.nullcontext():
        result = tune(splits, cfg, directory=directory, on_trial_end=hook)
    if tr is not None and run_id:
        tracking.log_params(tr, run_id, dict(result.best_hyperparameters), prefix="best.")
        tracking.set_tags(
            tr,
            run_id,
            {
                "xpz.best_trial_id": result.best_trial_id or "",
                "xpz.tune_dir": str(result.directory or directory or cfg.tune.directory),
                "xpz.tune_trials": str(len(result.trials)),
                "xpz.tune_decision": "search best is the default"
                if result.decision is None
                else result.decision.reason,
            },
        )
        if result.decision is not None:  # the paired confirmation (xpz.model.selection)
            d = result.decision
            scores = {f"tune/confirm_default_{i}": v for i, v in enumerate(d.default_scores)}
            scores.update({f"tune/confirm_challenger_{i}": v for i, v in enumerate(d.challenger_scores)})
            tracking.log_metrics(tr, run_id, {**scores, "tune/confirm_mean_gain": d.mean_gain})
    return result


def train_step(
    splits: Splits,
    cfg: Config,
    hyperparameters: Mapping[str, Any] | None = None,
    tr: tracking.Tracking | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Train the final model (given hyperparameters, else `model.architecture`); with a run id, log the
    hyperparameters (`hp.*`), the loss curves as step metrics, timing and calibration, the host
    (`xpz.host.*` tags: CPU, cores, TensorFlow, sgemm GFLOP/s) and `xpz.stopped_by_time_limit`
    (true only when the opt-in `train.max_seconds` cut training short: a host-dependent model)."""
    from xpz.hostinfo import host_tags
    from xpz.model.train import train_model

    result = train_model(splits, cfg, hyperparameters=hyperparameters)
    if result.stopped_by_time_limit:
        print(
            f"WARNING: train.max_seconds={cfg.train.max_seconds} stopped training before train.epochs="
            f"{cfg.train.epochs}; this model depends on the host's speed (run tagged xpz.stopped_by_time_limit=true)",
            flush=True,
        )
    if tr is not None and run_id:
        tags = {**host_tags(), "xpz.stopped_by_time_limit": str(result.stopped_by_time_limit).lower()}
        tracking.set_tags(tr, run_id, tags)
        tracking.log_params(tr, run_id, dict(result.hyperparameters), prefix="hp.")
        tracking.log_history(tr, run_id, result.history)
        summary: dict[str, Any] = {
            "train_seconds": result.seconds,
            "train_samples_per_s": result.samples_per_s,
            "train_epochs": result.epochs,
        }
        if getattr(result, "best_epoch", None) is not None:
            summary["train_best_epoch"] = result.best_epoch
        summary.update({f"calibration/{k}": v for k, v in (getattr(result, "calibration", {}) or {}).items()})
        tracking.log_metrics(tr, run_id, summary)
    return result


def evaluate_step(
    model: Any,
    splits: Splits,
    cfg: Config,
    history: Mapping[str, list[float]] | None = None,
    tr: tracking.Tracking | None = None,
    run_id: str | None = None,
) -> Evaluation:
    """Test-split metrics, per-bin table, baselines and figures; with a run id, all of it is logged."""
    from xpz.model.evaluate import evaluate

    evaluation = evaluate(model, splits, cfg, history=dict(history) if history else None)
    if tr is not None and run_id:
        tracking.log_evaluation(tr, run_id, evaluation)
    return evaluation


def log_context(
    tr: tracking.Tracking,
    run_id: str,
    cfg: Config,
    splits: Splits,
    repo: Path | str = ".",
    dvc_file: Path | str = "data.dvc",
) -> None:
    """Params (the whole Config, flattened), lineage tags and the train/val/test dataset inputs."""
    tracking.log_config(tr, run_id, cfg)
    tracking.set_tags(
        tr,
        run_id,
        tracking.lineage_tags(splits.digests, repo=repo, dvc_file=dvc_file, data_path=cfg.data.path),
    )
    tracking.log_lineage(tr, run_id, splits, source=cfg.data.path)


def log_model_step(
    tr: tracking.Tracking,
    run_id: str,
    model: Any,
    splits: Splits,
    hyperparameters: Mapping[str, Any] | None = None,
) -> tracking.LoggedModel:
    """The trained model as the run's pyfunc LoggedModel (input example: 5 test spectra)."""
    from xpz.spectra import flux_matrix

    example = flux_matrix(splits.test.head(5))
    return tracking.log_model(tr, run_id, model, example, params=hyperparameters)


def register_step(
    tr: tracking.Tracking,
    run_id: str,
    logged: tracking.LoggedModel,
    metrics: Mapping[str, float] | None = None,
    reuse: bool = False,
) -> tracking.Registration:
    """New registry version (alias challenger), promoted to champion only if it wins; its description
    is the model card (`xpz.tracking.cards.model_card`).

    `reuse`: when this run already registered a decided version (a retry after a lost response),
    return that one instead of registering a second version."""
    existing = tracking.existing_registration(tr, run_id) if reuse else None
    registration = existing or tracking.register(tr, run_id, logged, metrics)
    tracking.describe_registration(
        tr, run_id, registration.version, f"{registration.decision} ({registration.reason})"
    )
    return registration


# ------------------------------------------------------------------------------------- pipeline


def run_pipeline(
    cfg: Config,
    *,
    tune: bool | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    splits: Splits | None = None,
    tr: tracking.Tracking | None = None,
    tune_directory: Path | str | None = None,
    register: bool = True,
    run_name: str | None = None,
    reports_dir: Path | str | None = None,
    repo: Path | str = ".",
    dvc_file: Path | str = "data.dvc",
    echo: Echo = _quiet,
) -> PipelineResult:
    """Splits -> tune -> train -> evaluate -> log -> register -> promote, as one MLflow run.

    `tune` defaults to `cfg.tune.enabled`; given `hyperparameters` skip the search. `splits` and `tr`
    default to the stored split and `tracking.configure(cfg.tracking)`.
    """
    tr = tr or tracking.configure(cfg.tracking)
    do_tune = (cfg.tune.enabled if tune is None else tune) and hyperparameters is None
    t0 = time.perf_counter()
    if splits is None:
        echo(f"loading splits: {cfg.data.path} + {cfg.split.path}")
        splits = load_splits(cfg)
    sizes = {name: len(getattr(splits, name)) for name in ("train", "val", "test")}
    echo("splits: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))

    name = run_name or f"pipeline-{cfg.profile}"
    with tracking.run(tr, name, tags={"xpz.kind": "pipeline"}) as run_id:
        echo(f"MLflow run {run_id} ({tr.tracking_uri}, experiment {tr.experiment_name})")
        log_context(tr, run_id, cfg, splits, repo=repo, dvc_file=dvc_file)
        tracking.log_metrics(tr, run_id, {f"n_{k}": v for k, v in sizes.items()})

        hp = dict(hyperparameters) if hyperparameters is not None else None
        if do_tune:
            echo(f"tuning: up to {cfg.tune.max_trials} trials of {cfg.tune.epochs} epoch(s)")
            tuned = tune_step(splits, cfg, tr, run_id, directory=tune_directory)
            hp = dict(tuned.best_hyperparameters)
            echo(f"best trial {tuned.best_trial_id}: {hp}")
        tracking.set_tags(tr, run_id, {"xpz.tuned": str(do_tune).lower()})

        echo("training the final model")
        trained = train_step(splits, cfg, hp, tr, run_id)
        echo(
            f"trained {trained.epochs} epoch(s) in {trained.seconds:.0f} s ({trained.samples_per_s:,.0f} samples/s)"
        )

        echo("evaluating on the test split")
        evaluation = evaluate_step(trained.model, splits, cfg, trained.history, tr, run_id)
        logged = log_model_step(tr, run_id, trained.model, splits, trained.hyperparameters)

        registration = None
        if register:
            registration = register_step(tr, run_id, logged, evaluation.metrics)
            echo(f"registered {tr.registered_model} v{registration.version}: {registration.reason}")
        tracking.log_metrics(tr, run_id, {"pipeline_seconds": time.perf_counter() - t0})

    result = PipelineResult.from_steps(tr, run_id, trained, evaluation, logged, registration)
    if reports_dir is not None:
        from xpz.pipeline.reports import write_reports

        write_reports(reports_dir, result)
    return result
