"""Model commands of the `xpz` CLI: tune, train, evaluate, run, models, promote.

`xpz.cli` registers them at top level with `cli_model.register(app)` (or `app.add_typer(cli_model.app)`
for a sub-group). Each command reads params once, configures MLflow (`tracking` section, or
MLFLOW_TRACKING_URI), and calls `xpz.pipeline` / `xpz.tracking`. User-fixable errors (bad params, bad
input files, unknown versions) print one line and exit with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from xpz.cli.common import (
    ParamsOpt,
    ProfileOpt,
    SetOpt,
    check_output,
    config_from_options,
    guarded,
    require_store,
)
from xpz.env import quiet_telemetry
from xpz.files import write_text_atomic

quiet_telemetry()

app = typer.Typer(
    help="Model commands: tune, train, evaluate, run, models, promote.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

HpOpt = Annotated[
    Path | None,
    typer.Option("--hyperparameters", help="JSON file of flat hyperparameters (e.g. written by `xpz tune`)."),
]


STORE_HINT = "set MLFLOW_TRACKING_URI (or tracking.uri) to the store"


def _config(params: Path, profile: str | None, overrides: list[str] | None):
    return config_from_options(params, profile, overrides)


def _read_hyperparameters(path: Path | None) -> dict[str, Any] | None:
    from xpz.errors import InputError

    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: hyperparameters file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if isinstance(doc, dict) and isinstance(doc.get("hyperparameters"), dict):
        doc = doc["hyperparameters"]
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object of hyperparameters")
    layers = {"conv_layers": ("filters", "kernel"), "dense_layers": ("units",)}
    needed = list(layers)
    if all(isinstance(doc.get(k), int) for k in layers):
        needed += [f"{p}_{i}" for k, ps in layers.items() for i in range(doc[k]) for p in ps]
    wrong = [k for k in needed if not isinstance(doc.get(k), int) or isinstance(doc.get(k), bool)]
    if wrong:  # checked here: a bad value would otherwise fail inside the MLflow run, as a traceback
        raise InputError(
            f"{path}: hyperparameter(s) {', '.join(wrong)} missing or not whole numbers (the flat form "
            "`xpz tune` writes: conv_layers, filters_0, kernel_0, ..., dense_layers, units_0, ...)"
        )
    return doc


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def _print_table(evaluation: Any) -> None:
    typer.echo(evaluation.table_markdown() if hasattr(evaluation, "table_markdown") else evaluation.bin_table)


def _print_headline(metrics: dict[str, float]) -> None:
    keys = [
        "test_mae", "test_sigma_nmad", "test_outlier_fraction", "test_bias", "test_rmse",
        "test_worst_bin_bias", "test_coverage_68", "baseline_mean/test_mae", "baseline_knn/test_mae",
    ]  # fmt: skip
    for key in keys:
        if key in metrics:
            typer.echo(f"{key:24s} {metrics[key]:.4f}")


# -------------------------------------------------------------------------------------- commands


@app.command("tune")
@guarded()
def tune(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    directory: Annotated[
        Path | None, typer.Option(help="Tuner directory (default: tune.directory); the same one resumes.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the best hyperparameters here as JSON (default: <directory>/best_hyperparameters.json)."
        ),
    ] = None,
) -> None:
    """Bayesian hyperparameter search (keras-tuner); each trial is a nested MLflow run. Resumable."""
    from xpz import pipeline, tracking

    cfg = _config(params, profile, set_)
    base = Path(directory or cfg.tune.directory)
    target = out or base / "best_hyperparameters.json"
    # checked before the search (and its MLflow run): a file here would only fail at the end
    check_output(base, "--directory" if directory else "tune.directory", "the tuner's search", folder=True)
    check_output(target, "--out" if out else "--directory", "the best hyperparameters", force=True)
    tr = tracking.configure(cfg.tracking)
    splits = pipeline.load_splits(cfg)
    with tracking.run(tr, f"tune-{cfg.profile}", tags={"xpz.kind": "tune"}) as run_id:
        _echo(f"MLflow run {run_id}")
        pipeline.log_context(tr, run_id, cfg, splits)
        result = pipeline.tune_step(splits, cfg, tr, run_id, directory=directory)
    doc = {
        "best_trial_id": result.best_trial_id,
        "run_id": run_id,
        "hyperparameters": result.best_hyperparameters,
    }
    write_text_atomic(target, json.dumps(doc, indent=2, default=str) + "\n")
    for trial in result.trials:
        score = trial.metrics.get(cfg.tune.objective, float("nan"))
        typer.echo(f"trial {trial.trial_id:>4s} {trial.status:10s} {cfg.tune.objective}={score:.4f}")
    typer.echo(f"best trial: {result.best_trial_id} -> {target}")
    typer.echo(f"run id: {run_id}")


@app.command("train")
@guarded()
def train(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    hyperparameters: HpOpt = None,
) -> None:
    """Train one model (given hyperparameters, else model.architecture) and log it to MLflow (not registered)."""
    from xpz import pipeline, tracking

    cfg = _config(params, profile, set_)
    hp = _read_hyperparameters(hyperparameters)
    tr = tracking.configure(cfg.tracking)
    splits = pipeline.load_splits(cfg)
    with tracking.run(tr, f"train-{cfg.profile}", tags={"xpz.kind": "train"}) as run_id:
        _echo(f"MLflow run {run_id}")
        pipeline.log_context(tr, run_id, cfg, splits)
        trained = pipeline.train_step(splits, cfg, hp, tr, run_id)
        logged = pipeline.log_model_step(tr, run_id, trained.model, splits, trained.hyperparameters)
    typer.echo(
        f"trained {trained.epochs} epoch(s) in {trained.seconds:.0f} s ({trained.samples_per_s:,.0f} samples/s)"
    )
    typer.echo(f"model: {logged.model_uri}")
    typer.echo(f"run id: {run_id}  (next: xpz evaluate --run-id {run_id} --register)")


@app.command("evaluate")
@guarded()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Evaluate the model logged by this run and log the results into it."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Or a model URI, e.g. models:/xpz-redshift@champion (results printed, not logged)."
        ),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="With --run-id: register the model afterwards (champion if it wins).")
    ] = False,
    reports: Annotated[
        Path | None, typer.Option(help="Also write the per-bin table (CSV, Markdown) here.")
    ] = None,
) -> None:
    """Evaluate a logged model on the test split: metrics, the per-bin table, baselines, figures."""
    from xpz import pipeline, tracking
    from xpz.errors import InputError

    if (run_id is None) == (model is None):
        raise InputError("give exactly one of --run-id RUN or --model URI")
    if register and run_id is None:
        raise InputError(
            "--register needs --run-id: it registers that run's model (a --model is registered already)"
        )
    cfg = _config(params, profile, set_)
    if reports is not None:  # before metrics are logged into the run (and before registering)
        check_output(reports, "--reports", "the per-bin tables", folder=True)
    tr = tracking.configure(cfg.tracking)
    logged = tracking.run_model(tr, run_id) if run_id else None
    uri = logged.model_uri if logged else model
    assert uri is not None  # exactly one of --run-id / --model (checked above)
    keras_model = tracking.load_keras_model(uri)
    splits = pipeline.load_splits(cfg)
    history = tracking.run_history(tr, run_id) if run_id else None
    evaluation = pipeline.evaluate_step(keras_model, splits, cfg, history, tr if run_id else None, run_id)
    _print_table(evaluation)
    _print_headline(evaluation.metrics)
    if reports is not None:
        evaluation.write_tables(reports)
    if run_id and register and logged is not None:
        existing = tracking.existing_registration(tr, run_id)
        if existing is not None:  # retry-safe: one version per run (as the flow's register step)
            typer.echo(
                f"run {run_id}'s model is already {tr.registered_model} v{existing.version} "
                f"({existing.decision}: {existing.reason}); not registered again"
            )
            typer.echo(f"champion: v{existing.champion_version}")
            return
        reg = pipeline.register_step(tr, run_id, logged, evaluation.metrics)
        typer.echo(f"registered {tr.registered_model} v{reg.version}: {reg.reason}")
        typer.echo(f"champion: v{reg.champion_version}")


@app.command("run")
@guarded()
def run(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    tune_: Annotated[
        bool | None,
        typer.Option("--tune/--no-tune", help="Search hyperparameters first (default: tune.enabled)."),
    ] = None,
    hyperparameters: HpOpt = None,
    reports: Annotated[
        Path | None,
        typer.Option(help="Write metrics.json, run.json and the per-bin table here (for DVC)."),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the model and apply the champion/challenger rule.")
    ] = True,
) -> None:
    """The whole job: splits -> tune -> train -> evaluate -> log to MLflow -> register -> promote."""
    from xpz import pipeline

    cfg = _config(params, profile, set_)
    if reports is not None:  # before the run trains, logs and registers anything
        check_output(reports, "--reports", "the reports", folder=True)
    if (cfg.tune.enabled if tune_ is None else tune_) and hyperparameters is None:
        check_output(cfg.tune.directory, "tune.directory", "the tuner's search", folder=True)
    result = pipeline.run_pipeline(
        cfg,
        tune=tune_,
        hyperparameters=_read_hyperparameters(hyperparameters),
        register=register,
        reports_dir=reports,
        echo=_echo,
    )
    typer.echo("")
    _print_table(result.evaluation)
    _print_headline(result.evaluation.metrics)
    typer.echo(f"MLflow run id: {result.run_id}")
    if result.model_version is not None:
        verdict = "promoted to champion" if result.promoted else "challenger (champion kept)"
        typer.echo(f"model version: {result.model_version} ({verdict})")
        typer.echo(f"champion version: {result.champion_version}")


@app.command("models")
@guarded()
def models(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered model's versions with aliases, promotion decisions and test metrics."""
    from xpz import tracking

    cfg = _config(params, profile, set_)
    require_store(tracking.resolve_uri(cfg.tracking), STORE_HINT)  # read-only: never create a store
    tr = tracking.configure(cfg.tracking)
    infos = tracking.list_models(tr)
    if as_json:
        rows = [
            {
                "version": i.version, "aliases": i.aliases, "run_id": i.run_id, "decision": i.decision,
                "created": i.created.isoformat() if i.created is not None else None, "metrics": i.metrics,
            }
            for i in infos
        ]  # fmt: skip
        typer.echo(json.dumps(rows, indent=2))
        return
    if not infos:
        typer.echo(f"no versions of {tr.registered_model} yet (run `xpz run`)")
        return
    typer.echo(f"{tr.registered_model} ({tr.tracking_uri})")
    typer.echo(tracking.models_table(infos).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


@app.command("promote")
@guarded()
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    reason: Annotated[str, typer.Option(help="Why (recorded as a version tag).")] = "manual promotion",
) -> None:
    """Give VERSION the `champion` alias by hand (e.g. a rollback); recorded as version tags."""
    from xpz import tracking
    from xpz.errors import InputError

    version = version.strip()
    if not (version.isascii() and version.isdigit()):
        raise InputError(
            f"model version must be a whole number such as 3 (`xpz models` lists them), got {version!r}"
        )
    cfg = _config(params, profile, set_)
    require_store(tracking.resolve_uri(cfg.tracking), STORE_HINT)  # never create an empty store
    tr = tracking.configure(cfg.tracking)
    before = tracking.promote(tr, version, reason=reason)
    if before == version:
        typer.echo(f"{tr.registered_model}: v{version} is already the champion (nothing changed)")
        return
    typer.echo(f"{tr.registered_model}: champion v{before or '-'} -> v{version}")


COMMANDS = ("tune", "train", "evaluate", "run", "models", "promote")


def register(parent: typer.Typer) -> None:
    """Add the model commands at the top level of `parent` (xpz tune, xpz run, ...)."""
    for name in COMMANDS:
        parent.command(name)(globals()[name])
