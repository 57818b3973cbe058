"""Runs: start/end, params, metrics, training history, tables, figures, and tuning trials as nested runs.

Everything takes the run id (and the configured `Tracking` handle) explicitly: no function relies on
MLflow's "active run", so several pipelines can log into one store at the same time.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

if TYPE_CHECKING:
    pass
from xpz.tracking.cards import describe_run, run_description
from xpz.tracking.store import HISTORY_TAG, Tracking

# ----------------------------------------------------------------------------------------- runs


def start_run(
    tr: Tracking,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (nested under `parent_run_id` when given) and return its id."""
    from mlflow.tracking.context import registry as context_registry

    all_tags = context_registry.resolve_tags(dict(tags or {}))
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = tr.client.create_run(tr.experiment_id, tags=all_tags, run_name=run_name)
    return run.info.run_id


def end_run(tr: Tracking, run_id: str, status: str = "FINISHED") -> None:
    tr.client.set_terminated(run_id, status)


@contextlib.contextmanager
def run(
    tr: Tracking,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """`with run(tr, "name") as run_id:` a run that ends FINISHED, or FAILED on an exception, or KILLED
    on Ctrl-C or SIGTERM (inside `xpz.interrupts.terminate_raises`, which every CLI command uses)."""
    run_id = start_run(tr, run_name, tags, parent_run_id)
    try:
        yield run_id
    except KeyboardInterrupt:
        end_run(tr, run_id, "KILLED")
        raise
    except BaseException:
        end_run(tr, run_id, "FAILED")
        raise
    end_run(tr, run_id, "FINISHED")


PID_TAG = "xpz.pid"
HOST_TAG = "xpz.host"


def process_tags() -> dict[str, str]:
    """{xpz.host, xpz.pid} of this process: lets a later process tell that a RUNNING run is orphaned."""
    import os
    import socket

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _process_gone(pid: str | None) -> bool:
    import os

    try:
        os.kill(int(pid or ""), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OverflowError):
        return False
    return False


def close_orphaned_runs(tr: Tracking, tag: str, value: str, exclude: str | None = None) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment tagged `tag` = `value` whose process (tags
    `xpz.host`, `xpz.pid`, see `process_tags`) ran on this host and is gone, e.g. a tuning run whose
    process was killed; returns their ids. Runs of other hosts, or of live processes, are left alone."""
    import socket

    host = socket.gethostname()
    client = tr.client
    closed = []
    for found in client.search_runs(
        [tr.experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{tag}` = '{value}'"
    ):
        tags = found.data.tags
        if found.info.run_id == exclude or tags.get(HOST_TAG) != host or not _process_gone(tags.get(PID_TAG)):
            continue
        client.set_tag(
            found.info.run_id, "xpz.end_reason", f"process {tags.get(PID_TAG)} gone (found on resume)"
        )
        end_run(tr, found.info.run_id, "KILLED")
        closed.append(found.info.run_id)
    return closed


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'model': {'conv_filters': [64, 32]}} -> {'model.conv_filters': '[64, 32]'} (param strings)."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def config_params(cfg: Any) -> dict[str, str]:
    """The Config as flat params (`data.n_galaxies`, `model.conv_filters`); `profiles` left out."""
    raw = cfg.model_dump(mode="json", by_alias=True) if hasattr(cfg, "model_dump") else dict(cfg)
    raw.pop("profiles", None)
    return flatten(raw)


def log_params(tr: Tracking, run_id: str, params: Mapping[str, Any], prefix: str = "") -> None:
    """Log params (already flat or nested; nested ones are flattened with dots)."""
    flat = flatten(params, prefix)
    if flat:
        tr.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flat.items()])


def log_config(tr: Tracking, run_id: str, cfg: Any) -> None:
    """All params of the Config, flattened, plus the profile as a tag."""
    log_params(tr, run_id, config_params(cfg))
    if getattr(cfg, "profile", None):
        tr.client.set_tag(run_id, "xpz.profile", str(cfg.profile))


def set_tags(tr: Tracking, run_id: str, tags: Mapping[str, Any]) -> None:
    if tags:
        tr.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _finite_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def log_metrics(
    tr: Tracking, run_id: str, metrics: Mapping[str, Any], step: int = 0, prefix: str = ""
) -> None:
    """Flat metrics (names as given, e.g. `bin_0.10-0.15/mean_error`); NaN is kept as NaN."""
    import time

    now = int(time.time() * 1000)
    batch = [Metric(f"{prefix}{k}", _finite_or_nan(v), now, step) for k, v in metrics.items()]
    if batch:
        tr.client.log_batch(run_id, metrics=batch)


def log_history(tr: Tracking, run_id: str, history: Mapping[str, Sequence[float]]) -> None:
    """Keras history (`loss`, `val_loss`, `mae`, ...) as step metrics, step = epoch (0-based)."""
    import time

    now = int(time.time() * 1000)
    batch = [
        Metric(key, _finite_or_nan(value), now, epoch)
        for key, values in history.items()
        for epoch, value in enumerate(values)
    ]
    if batch:
        tr.client.log_batch(run_id, metrics=batch, tags=[RunTag(HISTORY_TAG, json.dumps(sorted(history)))])


def run_history(tr: Tracking, run_id: str) -> dict[str, list[float]]:
    """The training history logged by `log_history`, back as {key: [value per epoch]}."""
    client = tr.client
    keys = json.loads(client.get_run(run_id).data.tags.get(HISTORY_TAG, "[]"))
    out = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        out[key] = [m.value for m in points]
    return out


def _markdown_table(table: pd.DataFrame) -> str:
    try:
        return table.to_markdown(index=False, floatfmt=".4f")
    except ImportError:  # tabulate missing: a plain pipe table
        cols = [str(c) for c in table.columns]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in table.itertuples(index=False):
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def log_bin_table(
    tr: Tracking, run_id: str, table: pd.DataFrame, name: str = "per_bin", markdown: str | None = None
) -> None:
    """The per-bin table as `evaluation/<name>.csv` and `evaluation/<name>.md`."""
    client = tr.client
    client.log_text(run_id, table.to_csv(index=False), f"evaluation/{name}.csv")
    client.log_text(run_id, markdown or (_markdown_table(table) + "\n"), f"evaluation/{name}.md")


def log_figures(tr: Tracking, run_id: str, figures: Mapping[str, Any], close: bool = True) -> None:
    """Each matplotlib figure as `figures/<name>.png`."""
    client = tr.client
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"figures/{name}.png")
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)


def log_frame(tr: Tracking, run_id: str, frame: pd.DataFrame, artifact_file: str) -> None:
    """A DataFrame as a Parquet artifact."""
    with tempfile.TemporaryDirectory(prefix="xpz-mlflow-") as tmp:
        path = Path(tmp) / Path(artifact_file).name
        frame.to_parquet(path, index=False)
        parent = str(Path(artifact_file).parent)
        tr.client.log_artifact(run_id, str(path), None if parent == "." else parent)


BASELINE_PREFIX = "baseline_"  # evaluation metrics `baseline_<name>/<metric>` belong to a baseline


def split_baselines(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the model's own metrics, {baseline name: {metric: value}}) from an evaluation's flat metrics."""
    own: dict[str, Any] = {}
    baselines: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        name, sep, metric = key.partition("/")
        if sep and name.startswith(BASELINE_PREFIX):
            baselines.setdefault(name, {})[metric] = value
        else:
            own[key] = value
    return own, baselines


def log_evaluation(tr: Tracking, run_id: str, evaluation: Any, close_figures: bool = True) -> None:
    """Metrics, per-bin table (CSV + Markdown), test predictions, test p(z) (qp) and figures of an `Evaluation`.

    The run's charts hold the model's own metrics only; each baseline (`baseline_mean`, `baseline_knn`)
    is a nested run of that name (tag `xpz.kind=baseline`) with the same metric names (`test_mae`, ...)
    and its per-bin table, so the experiment's chart view compares them with the model side by side.
    The run's description (`mlflow.note.content`) is set from the same values (`xpz.tracking.cards`)."""
    own, baselines = split_baselines(evaluation.metrics)
    log_metrics(tr, run_id, own)
    to_md = getattr(evaluation, "table_markdown", None)
    if callable(to_md):  # the run's description: headline (+ per-family) metrics, baselines, per-bin table
        base_mae = {name: values["test_mae"] for name, values in baselines.items() if "test_mae" in values}
        describe_run(tr, run_id, run_description(own, to_md(), base_mae))
    tables = getattr(evaluation, "baseline_tables", None) or {}
    for name, values in baselines.items():
        with run(tr, name, tags={"xpz.kind": "baseline"}, parent_run_id=run_id) as child:
            log_metrics(tr, child, values)
            if name in tables:
                log_bin_table(tr, child, tables[name], name="per_bin")
    bin_table = getattr(evaluation, "bin_table", None)
    if bin_table is not None:
        to_md = getattr(evaluation, "table_markdown", None)
        log_bin_table(tr, run_id, bin_table, markdown=to_md() if callable(to_md) else None)
    if getattr(evaluation, "snr_table", None) is not None:  # per S/N quartile (xpz.model.coverage_report)
        log_bin_table(tr, run_id, evaluation.snr_table, name="per_snr")
    for family, table in (getattr(evaluation, "family_tables", None) or {}).items():  # per galaxy family
        log_bin_table(tr, run_id, table, name=f"per_bin_{family}")
    predictions = getattr(evaluation, "predictions", None)
    if predictions is not None and len(predictions):
        log_frame(tr, run_id, predictions, "evaluation/predictions.parquet")
    write_pdfs = getattr(evaluation, "write_pdfs", None)
    if callable(write_pdfs) and getattr(evaluation, "pdfs", None) is not None:
        with tempfile.TemporaryDirectory(prefix="xpz-mlflow-") as tmp:  # the test p(z), qp's HDF5 format
            tr.client.log_artifact(run_id, str(write_pdfs(Path(tmp) / "test_pdfs.hdf5")), "evaluation")
    figures = getattr(evaluation, "figures", None)
    if figures:
        log_figures(tr, run_id, figures, close=close_figures)


# ----------------------------------------------------------------------------- trials (tuning)


def log_trial(tr: Tracking, parent_run_id: str, trial: Any) -> str:
    """One keras-tuner trial as a nested run: hyperparameters as params, its metrics, its status."""
    trial_id = str(getattr(trial, "trial_id", "?"))
    status = str(getattr(trial, "status", "COMPLETED"))
    run_id = start_run(
        tr,
        run_name=f"trial-{trial_id}",
        tags={"xpz.kind": "trial", "xpz.trial_id": trial_id, "xpz.trial_status": status},
        parent_run_id=parent_run_id,
    )
    try:
        log_params(tr, run_id, dict(getattr(trial, "hyperparameters", {}) or {}))
        metrics = dict(getattr(trial, "metrics", {}) or {})
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, tuple))}
        series = {k: v for k, v in metrics.items() if isinstance(v, (list, tuple))}
        log_metrics(tr, run_id, scalars)
        log_history(tr, run_id, series)
    except BaseException:
        end_run(tr, run_id, "FAILED")
        raise
    ok = status.upper() in ("COMPLETED", "FINISHED", "OK", "SUCCESS")
    end_run(tr, run_id, "FINISHED" if ok else "FAILED")
    return run_id


def trial_logger(tr: Tracking, parent_run_id: str) -> Callable[[Any], None]:
    """An `on_trial_end` hook for `xpz.model.tune.tune` that logs each trial under `parent_run_id`."""

    def on_trial_end(trial: Any) -> None:
        log_trial(tr, parent_run_id, trial)

    return on_trial_end
