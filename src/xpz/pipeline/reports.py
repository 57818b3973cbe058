"""What a pipeline run leaves on disk and shows people: DVC outputs, figures, the summary, cache keys.

The CLI (`xpz run`), `run_pipeline` and the Prefect flow share these, so the files under `reports/`
are the same whoever ran the job. May import: xpz core and xpz.pipeline.steps (types only).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from xpz.files import file_digest, json_digest, write_text_atomic

if TYPE_CHECKING:
    from xpz.model.evaluate import Evaluation
    from xpz.pipeline.steps import PipelineResult

SUMMARY_ROWS = (
    ("test MAE", "test_mae"), ("sigma_NMAD", "test_sigma_nmad"), ("outlier fraction", "test_outlier_fraction"),
    ("bias", "test_bias"), ("worst per-bin bias (z <= 0.5)", "test_worst_bin_bias"),
    ("68% interval coverage", "test_coverage_68"), ("baseline mean: test MAE", "baseline_mean/test_mae"),
    ("baseline kNN: test MAE", "baseline_knn/test_mae"),
)  # fmt: skip


def validation_key(data_path: Path | str, section: Mapping[str, Any]) -> str | None:
    """Cache key of a validation verdict: the dataset's bytes + the `validate` section (None: no file)."""
    path = Path(data_path)
    if not path.is_file():
        return None
    return json_digest({"data": file_digest(path), "validate": dict(section)})


def write_run_files(
    directory: Path | str, result: PipelineResult, extra: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """metrics.json, bin_table.csv/.md and run.json (run id, versions, plus `extra`), each atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = dict(result.evaluation.write_tables(d))

    def _clean(v: float) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    docs = {
        "metrics": {k: _clean(v) for k, v in sorted(result.evaluation.metrics.items())},
        "run": {
            "run_id": result.run_id,
            "model_version": result.model_version,
            "champion_version": result.champion_version,
            "promoted": result.promoted,
            "model_uri": result.model_uri,
            "tracking_uri": result.tracking_uri,
            "experiment_id": result.experiment_id,
            **dict(extra or {}),
        },
    }
    for name, doc in docs.items():
        paths[name] = write_text_atomic(d / f"{name}.json", json.dumps(doc, indent=2, default=str) + "\n")
    return paths


def write_figures(directory: Path | str, figures: Mapping[str, Any], dpi: int = 80) -> Path:
    """Each matplotlib figure as `<directory>/figures/<name>.png`, swapped in as a whole folder.

    The PNGs are written to a staging folder first, so a reader never sees a mix of two runs' figures.
    """
    out = Path(directory)
    target = out / "figures"
    staging = Path(tempfile.mkdtemp(prefix=".figures.", dir=out))
    staging.chmod(0o755)
    old = out / f".figures.old.{os.getpid()}"
    try:
        for name, fig in figures.items():
            fig.savefig(staging / f"{name}.png", dpi=dpi)
        if target.exists():
            target.rename(old)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def write_reports(
    directory: Path | str, result: PipelineResult, extra: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """The DVC outputs of a run: metrics.json, bin_table.csv/.md, run.json and figures/*.png.

    A file lock keeps two runs finishing together from interleaving: the last to finish owns the set.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".write.lock")):
        paths = write_run_files(out, result, extra)
        paths["figures"] = write_figures(out, result.evaluation.figures)
    return paths


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI address of a run when the store is a server (None for a local store)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def run_info(
    result: PipelineResult, cfg: Any, aliases: Mapping[str, str], rows: int, **extra: Any
) -> dict[str, Any]:
    """What a finished run reports (flow result, `reports/run.json` extras, the summary artifact)."""
    reg = result.registration
    return {
        "mlflow_run_id": result.run_id,
        "mlflow_run_url": run_url(result.tracking_uri or "", result.experiment_id or "", result.run_id),
        "tracking_uri": result.tracking_uri,
        "experiment": cfg.tracking.experiment,
        "registered_model": cfg.tracking.registered_model,
        "model_version": result.model_version,
        "decision": reg.decision if reg else "",
        "reason": reg.reason if reg else "",
        "champion_version": result.champion_version,
        "aliases": dict(aliases),
        "profile": cfg.profile,
        "rows": rows,
        **extra,
    }


def summary_markdown(evaluation: Evaluation, info: Mapping[str, Any]) -> str:
    """A run's summary for people: MLflow run, registry decision, headline metrics, the per-bin table."""
    metrics = evaluation.metrics
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
        *[f"| {label} | {metrics[key]:.4f} |" for label, key in SUMMARY_ROWS if key in metrics],
        "",
        "## Per-bin errors on the test split",
        "",
        evaluation.table_markdown(),
    ]
    return "\n".join(lines)
