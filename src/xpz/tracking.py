"""MLflow tracking, dataset lineage, the pyfunc wrapper, the registry and champion/challenger promotion.

Everything here takes the run id (and the configured `Tracking` handle) explicitly: no function relies on
MLflow's "active run", so several pipelines can log into one store at the same time. The only process-wide
state touched is MLflow's tracking URI, set by `configure` (pyfunc logging and `models:/` URIs resolve
through it).

Store layout (embedded default): `sqlite:///mlflow.db` with artifacts under `./mlruns`; the usual
`MLFLOW_TRACKING_URI` variable wins over params.yaml.

Names written by this module (the contract with the UI, `xpz models` and the flows):
  run tags       xpz.git_commit (+ mlflow.source.git.commit), xpz.git_dirty, xpz.data_md5,
                 xpz.split_digest.{train,val,test}, xpz.profile, xpz.kind (pipeline | trial | ...)
  params         the Config flattened with dots (`split.seed`, `model.conv_filters`), hp.<name> for
                 the hyperparameters actually trained
  metrics        evaluation metrics as given (`test_mae`, `bin_0.10-0.15/mean_error`), the training
                 history as step metrics (`loss`, `val_loss`, ... step = epoch)
  artifacts      figures/<name>.png, evaluation/per_bin.csv, evaluation/per_bin.md,
                 evaluation/predictions.parquet; the model is an MLflow LoggedModel named `model`
  version tags   xpz.decision (promoted | challenger | manual_promotion), xpz.decision_reason,
                 xpz.primary_metric, xpz.direction, xpz.candidate_value, xpz.champion_value,
                 xpz.champion_version_before, xpz.split_comparison (first_model | same_split |
                 across_splits | unknown_split), xpz.split_digest.test
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from xpz.errors import InputError
from xpz.spectra import FLUX_COLUMNS, FLUX_DTYPE, ID_COLUMN, N_FLUX, TARGET_COLUMN

if TYPE_CHECKING:
    from xpz.config import TrackingConfig

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
MODEL_NAME = "model"  # the LoggedModel's name inside a run
KERAS_ARTIFACT = "keras_model"
CHAMPION = "champion"
CHALLENGER = "challenger"
SPLITS = ("train", "val", "test")
SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}
DIGEST_TAG = "xpz.split_digest.{}"
HISTORY_TAG = "xpz.history_keys"
LISTED_METRICS = (
    "test_mae",
    "test_sigma_nmad",
    "test_outlier_fraction",
    "test_bias",
    "test_worst_bin_bias",
    "test_coverage_68",
)


# --------------------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Tracking:
    """A configured MLflow store: where runs, models and versions go. Immutable; pass it down."""

    tracking_uri: str
    registry_uri: str
    experiment_id: str
    experiment_name: str
    registered_model: str
    primary_metric: str = "test_mae"
    direction: str = "minimize"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def better(self, candidate: float, reference: float) -> bool:
        """Whether `candidate` strictly beats `reference` on the primary metric."""
        return candidate > reference if self.direction == "maximize" else candidate < reference


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _artifact_uri(location: str) -> str:
    """A local artifact location as an absolute file URI (so runs started elsewhere find it)."""
    if "://" in location:
        return location
    return Path(location).expanduser().absolute().resolve().as_uri()


def resolve_uri(cfg: "TrackingConfig", tracking_uri: str | None = None) -> str:
    """The tracking URI: the argument, else `MLFLOW_TRACKING_URI`, else params (`tracking.uri`)."""
    return tracking_uri or os.environ.get(TRACKING_URI_ENV) or cfg.uri


def configure(cfg: "TrackingConfig", tracking_uri: str | None = None) -> Tracking:
    """Point MLflow at the configured store and make sure the experiment exists.

    The URI is, in order: the `tracking_uri` argument, `MLFLOW_TRACKING_URI`, `cfg.uri`. For a local
    store (sqlite or file) a missing experiment is created with `cfg.artifact_location` as its
    artifact root; a remote server keeps its own artifact settings.
    """
    uri = resolve_uri(cfg, tracking_uri)
    registry_uri = os.environ.get(REGISTRY_URI_ENV) or uri
    mlflow.set_tracking_uri(uri)  # pyfunc logging and models:/ URIs resolve through it
    client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        location = _artifact_uri(cfg.artifact_location) if _is_local_store(uri) else None
        try:
            experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
        except MlflowException as err:  # another process created it first
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(cfg.experiment).experiment_id
    else:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        experiment_id = experiment.experiment_id
    return Tracking(
        tracking_uri=uri,
        registry_uri=registry_uri,
        experiment_id=experiment_id,
        experiment_name=cfg.experiment,
        registered_model=cfg.registered_model,
        primary_metric=cfg.primary_metric,
        direction=cfg.direction,
    )


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
    """`with run(tr, "name") as run_id:` a run that ends FINISHED, or FAILED/KILLED on an exception."""
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


def git_commit(repo: Path | str = ".") -> tuple[str, bool] | None:
    """(HEAD commit, working tree dirty) of the git checkout at `repo`, or None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def dvc_md5(dvc_file: Path | str = "data.dvc") -> str | None:
    """The md5 of the first output recorded in a .dvc file, or None when there is none."""
    path = Path(dvc_file)
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        outs = doc.get("outs") or []
        return str(outs[0]["md5"]) if outs and outs[0].get("md5") else None
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None


def lineage_tags(
    digests: Mapping[str, str] | None = None,
    repo: Path | str = ".",
    dvc_file: Path | str = "data.dvc",
) -> dict[str, str]:
    """Tags that pin a run to its code and data: git commit, data.dvc md5, split digests."""
    tags: dict[str, str] = {}
    commit = git_commit(repo)
    if commit is not None:
        tags["xpz.git_commit"] = commit[0]
        tags["mlflow.source.git.commit"] = commit[0]
        tags["xpz.git_dirty"] = str(commit[1]).lower()
    md5 = dvc_md5(dvc_file)
    if md5 is not None:
        tags["xpz.data_md5"] = md5
    for split, digest in (digests or {}).items():
        tags[DIGEST_TAG.format(split)] = str(digest)
    return tags


def log_lineage(
    tr: Tracking,
    run_id: str,
    splits: Any,
    source: str | Path | None = None,
) -> None:
    """Dataset lineage: each split as an `mlflow.data` dataset input with its context.

    Only `source_id` and `z` of each split are profiled (not the 186 fluxes): the dataset digest is the
    split digest (sha256 of the sorted source ids, shortened to MLflow's 36 characters), the full one is
    an input tag and a run tag.
    """
    digests = dict(getattr(splits, "digests", {}) or {})
    inputs = []
    for split in SPLITS:
        frame = getattr(splits, split)
        light = frame.loc[:, [ID_COLUMN, TARGET_COLUMN]].reset_index(drop=True)
        full = digests.get(split)
        with warnings.catch_warnings():  # int64 source_id hint; ambiguous local-path source
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                light,
                source=str(source) if source is not None else None,
                targets=TARGET_COLUMN,
                name=f"xpz-{split}",
                digest=full[:36] if full else None,
            )
            entity = dataset._to_mlflow_entity()  # what mlflow.log_input logs (schema + profile)
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_CONTEXT[split])]
        if full:
            tags.append(InputTag("xpz.split_digest", full))
        inputs.append(DatasetInput(entity, tags=tags))
    tr.client.log_inputs(run_id, datasets=inputs)
    set_tags(tr, run_id, {DIGEST_TAG.format(k): v for k, v in digests.items()})


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


def log_evaluation(tr: Tracking, run_id: str, evaluation: Any, close_figures: bool = True) -> None:
    """Metrics, per-bin table (CSV + Markdown), test predictions and figures of an `Evaluation`."""
    log_metrics(tr, run_id, evaluation.metrics)
    bin_table = getattr(evaluation, "bin_table", None)
    if bin_table is not None:
        to_md = getattr(evaluation, "table_markdown", None)
        log_bin_table(tr, run_id, bin_table, markdown=to_md() if callable(to_md) else None)
    for name, table in (getattr(evaluation, "baseline_tables", None) or {}).items():
        log_bin_table(tr, run_id, table, name=f"per_bin_{name}")
    predictions = getattr(evaluation, "predictions", None)
    if predictions is not None and len(predictions):
        log_frame(tr, run_id, predictions, "evaluation/predictions.parquet")
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
    """An `on_trial_end` hook for `xpz.tune.tune` that logs each trial under `parent_run_id`."""

    def on_trial_end(trial: Any) -> None:
        log_trial(tr, parent_run_id, trial)

    return on_trial_end


# --------------------------------------------------------------------------------- pyfunc model


def as_flux_array(model_input: Any) -> np.ndarray:
    """Raw fluxes from a DataFrame (the 186 flux columns, by name) or an array-like, as (n, 186) float32."""
    if isinstance(model_input, pd.DataFrame):
        if all(c in model_input.columns for c in FLUX_COLUMNS):
            values = model_input.loc[:, list(FLUX_COLUMNS)].to_numpy(dtype=FLUX_DTYPE)
        elif model_input.shape[1] == N_FLUX:
            values = model_input.to_numpy(dtype=FLUX_DTYPE)
        else:
            missing = [c for c in FLUX_COLUMNS if c not in model_input.columns]
            raise InputError(
                f"model input: expected the {N_FLUX} flux columns flux_000..flux_185; "
                f"missing {len(missing)} (e.g. {', '.join(missing[:3])})"
            )
    else:
        if isinstance(model_input, Mapping):
            model_input = next(iter(model_input.values())) if len(model_input) == 1 else model_input
        values = np.asarray(model_input, dtype=FLUX_DTYPE)
        if values.ndim == 1 and values.shape[0] == N_FLUX:
            values = values.reshape(1, N_FLUX)
    if values.ndim != 2 or values.shape[1] != N_FLUX:
        raise InputError(f"model input: expected shape (n, {N_FLUX}) of raw fluxes, got {values.shape}")
    return np.ascontiguousarray(values)


def _import_custom_objects() -> None:
    """Import the modules that register xpz's custom Keras layers (absent ones are skipped)."""
    for module in ("xpz.scaling", "xpz.model"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


class XpzRedshiftModel(mlflow.pyfunc.PythonModel):
    """Raw Gaia XP fluxes -> DataFrame[z, z_lower, z_upper], via `xpz.predict.predict_redshift`.

    The Keras model (scaling layer inside) is the artifact `keras_model`; input is a DataFrame holding
    the 186 flux columns (`xpz.spectra.FLUX_COLUMNS`, other columns ignored) or an (n, 186) array.
    """

    def __init__(self, batch_size: int = 1024) -> None:
        self.batch_size = batch_size
        self._model = None

    def load_context(self, context: Any) -> None:
        import keras

        _import_custom_objects()
        self._model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    # `np.ndarray` is a hint MLflow 3 takes as "no signature from type hints": the logged tensor
    # signature decides, and a DataFrame of the flux columns arrives here as an array.
    @property
    def keras_model(self) -> Any:
        """The loaded Keras model (after `load_context`)."""
        return self._model

    def predict(self, context, model_input: np.ndarray, params=None):
        from xpz.predict import predict_redshift

        fluxes = as_flux_array(model_input)
        batch_size = int((params or {}).get("batch_size", self.batch_size))
        return predict_redshift(self._model, fluxes, batch_size=batch_size)

    def __getstate__(self) -> dict[str, Any]:  # never pickle the loaded Keras model
        state = dict(self.__dict__)
        state["_model"] = None
        return state


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model (the installed versions of what it imports)."""
    reqs = []
    for dist in ("mlflow", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "pyarrow",
                 "scipy", "pydantic", "pyyaml"):
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if any(r.startswith("tensorflow-cpu==") for r in reqs):
        reqs = [r for r in reqs if not r.startswith("tensorflow==")]
    return reqs


def _package_dir() -> str:
    return str(Path(__file__).resolve().parent)


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    model_uri: str  # models:/<model_id>


def log_model(
    tr: Tracking,
    run_id: str,
    keras_model: Any,
    input_example: Any,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
) -> LoggedModel:
    """Log the Keras model wrapped in `XpzRedshiftModel` as the run's LoggedModel `model`.

    The xpz package is bundled as code (`code_paths`), requirements are pinned to this environment,
    and the signature (186 float32 flux columns -> z, z_lower, z_upper) comes from `input_example`.
    """
    from mlflow.models import infer_signature

    from xpz.predict import predict_redshift

    client = tr.client
    example = as_flux_array(input_example)
    wrapper = XpzRedshiftModel(batch_size=batch_size)
    # A tensor signature (float32, (-1, 186)): both an (n, 186) array and a DataFrame of the 186 flux
    # columns (in grid order) pass MLflow's schema enforcement; a column signature would reject arrays.
    signature = infer_signature(example, predict_redshift(keras_model, example))
    logged = client.create_logged_model(
        tr.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params={k: v[:6000] for k, v in flatten(params or {}).items()},
        model_type="xpz-redshift-cnn",
    )
    with tempfile.TemporaryDirectory(prefix="xpz-model-") as tmp:
        keras_path = Path(tmp) / "model.keras"
        keras_model.save(keras_path)
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            model_id=logged.model_id,
            python_model=wrapper,
            artifacts={KERAS_ARTIFACT: str(keras_path)},
            code_paths=[_package_dir()],
            pip_requirements=pip_requirements(),
            signature=signature,
            input_example=example,
        )
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
    return LoggedModel(model_id=logged.model_id, model_uri=f"models:/{logged.model_id}")


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Registration:
    """What `register` did: the new version, the champion after the decision, and why."""

    version: str
    champion_version: str
    promoted: bool
    decision: str
    reason: str
    candidate_value: float
    champion_value: float | None
    previous_champion: str | None
    split_comparison: str


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(
            name, description="xpz: galaxy redshift from Gaia XP spectra (raw fluxes in, z out)"
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _run_metric(client: MlflowClient, run_id: str | None, key: str) -> float | None:
    if not run_id:
        return None
    value = client.get_run(run_id).data.metrics.get(key)
    return None if value is None or math.isnan(value) else float(value)


def _run_tag(client: MlflowClient, run_id: str | None, key: str) -> str | None:
    if not run_id:
        return None
    return client.get_run(run_id).data.tags.get(key)


def _decide(
    tr: Tracking, candidate: float, champion, client: MlflowClient, test_digest: str | None
) -> tuple[bool, str, float | None, str]:
    """(promote?, reason, champion value, split comparison) against the current champion."""
    if champion is None:
        return True, "first model: no champion yet", None, "first_model"
    champ_value = _run_metric(client, champion.run_id, tr.primary_metric)
    champ_digest = _run_tag(client, champion.run_id, DIGEST_TAG.format("test"))
    if test_digest and champ_digest:
        comparison = "same_split" if champ_digest == test_digest else "across_splits"
    else:
        comparison = "unknown_split"
    metric = tr.primary_metric
    if math.isnan(candidate):
        return False, f"candidate has no {metric}", champ_value, comparison
    if champ_value is None:
        return True, f"champion v{champion.version} has no {metric}", None, comparison
    if tr.better(candidate, champ_value):
        word = "lower" if tr.direction == "minimize" else "higher"
        return True, f"{metric} {candidate:.6g} {word} than champion v{champion.version} ({champ_value:.6g})", champ_value, comparison
    return False, f"{metric} {candidate:.6g} does not beat champion v{champion.version} ({champ_value:.6g})", champ_value, comparison


def register(
    tr: Tracking,
    run_id: str,
    model: LoggedModel | str,
    metrics: Mapping[str, float] | None = None,
) -> Registration:
    """Register the run's model as a new version, alias it `challenger`, promote it if it wins.

    The candidate's primary metric comes from `metrics` (or the run); the champion's from the
    champion's run. Both runs' test-split digests are compared: when they differ the comparison is
    still made but recorded as `across_splits` (re-evaluating the champion is out of scope).
    """
    client = tr.client
    name = tr.registered_model
    model_id = model.model_id if isinstance(model, LoggedModel) else str(model).removeprefix("models:/")
    metric = tr.primary_metric
    candidate = metrics.get(metric) if metrics is not None else None
    if candidate is None:
        candidate = _run_metric(client, run_id, metric)
    candidate = float("nan") if candidate is None else float(candidate)
    test_digest = _run_tag(client, run_id, DIGEST_TAG.format("test"))

    _ensure_registered_model(client, name)
    version = str(client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        model_id=model_id,
        tags={"xpz.primary_metric": metric, "xpz.candidate_value": repr(candidate)},
    ).version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    # Decide against the current champion; re-read it right before moving the alias so that a
    # concurrent promotion between our read and our write is compared against, not overwritten.
    champion = _alias_version(client, name, CHAMPION)
    for _ in range(3):
        promote_it, reason, champ_value, comparison = _decide(tr, candidate, champion, client, test_digest)
        latest = _alias_version(client, name, CHAMPION)
        if (latest and str(latest.version)) == (champion and str(champion.version)):
            break
        champion = latest
    else:
        promote_it, reason, champ_value, comparison = _decide(tr, candidate, champion, client, test_digest)
    previous = str(champion.version) if champion is not None else None
    if promote_it:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = "promoted" if promote_it else "challenger"
    tags = {
        "xpz.decision": decision,
        "xpz.decision_reason": reason,
        "xpz.direction": tr.direction,
        "xpz.champion_value": "" if champ_value is None else repr(champ_value),
        "xpz.champion_version_before": previous or "",
        "xpz.split_comparison": comparison,
        "xpz.split_digest.test": test_digest or "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_tag(run_id, "xpz.model_version", str(version))
    return Registration(
        version=str(version),
        champion_version=str(version) if promote_it else str(previous),
        promoted=promote_it,
        decision=decision,
        reason=reason,
        candidate_value=candidate,
        champion_value=champ_value,
        previous_champion=previous,
        split_comparison=comparison,
    )


def promote(tr: Tracking, version: str | int, reason: str = "manual promotion") -> str | None:
    """Give `version` the `champion` alias by hand; returns the previous champion version (or None)."""
    client = tr.client
    name = tr.registered_model
    version = str(version)
    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"registered model {name!r} has no version {version}") from None
        raise
    before = _alias_version(client, name, CHAMPION)
    previous = str(before.version) if before is not None else None
    client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        "xpz.decision": "manual_promotion",
        "xpz.decision_reason": reason,
        "xpz.champion_version_before": previous or "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    run_id: str | None
    created: pd.Timestamp | None
    decision: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def list_models(tr: Tracking, metrics: Sequence[str] | None = None) -> list[VersionInfo]:
    """Every version of the registered model (newest first) with aliases, decision and test metrics."""
    client = tr.client
    name = tr.registered_model
    keys = list(dict.fromkeys([tr.primary_metric, *(metrics or LISTED_METRICS)]))
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    try:
        aliases_by_version: dict[str, list[str]] = {}
        for alias, ver in (client.get_registered_model(name).aliases or {}).items():
            aliases_by_version.setdefault(str(ver), []).append(alias)
    except MlflowException:
        aliases_by_version = {}
    out = []
    for mv in versions:
        run_metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                all_metrics = client.get_run(mv.run_id).data.metrics
                run_metrics = {k: all_metrics[k] for k in keys if k in all_metrics}
            except MlflowException:
                pass
        out.append(
            VersionInfo(
                version=str(mv.version),
                aliases=sorted(aliases_by_version.get(str(mv.version), list(mv.aliases or []))),
                run_id=mv.run_id,
                created=pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC")
                if mv.creation_timestamp
                else None,
                decision=(mv.tags or {}).get("xpz.decision"),
                metrics=run_metrics,
                tags=dict(mv.tags or {}),
            )
        )
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def models_table(infos: Sequence[VersionInfo]) -> pd.DataFrame:
    """`list_models` output as a table (one row per version)."""
    rows = []
    for info in infos:
        row = {
            "version": info.version,
            "aliases": ",".join(info.aliases),
            "decision": info.decision or "",
            "created": info.created.strftime("%Y-%m-%d %H:%M") if info.created is not None else "",
            "run_id": info.run_id or "",
        }
        row.update(info.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def run_model(tr: Tracking, run_id: str) -> LoggedModel:
    """The (last) model logged by a run."""
    run = tr.client.get_run(run_id)
    outputs = list(getattr(run.outputs, "model_outputs", None) or [])
    if not outputs:
        raise InputError(f"MLflow run {run_id} has no logged model")
    model_id = max(outputs, key=lambda o: o.step).model_id
    return LoggedModel(model_id=model_id, model_uri=f"models:/{model_id}")


def load_keras_model(model_uri: str) -> Any:
    """The Keras model inside an xpz pyfunc model (`models:/<id>`, `models:/<name>@champion`, ...)."""
    wrapper = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(wrapper, XpzRedshiftModel):
        raise InputError(f"{model_uri} is not an xpz redshift model")
    return wrapper.keras_model


def load_champion(tr: Tracking, alias: str = CHAMPION):
    """The pyfunc model behind an alias (`models:/<name>@champion`)."""
    return mlflow.pyfunc.load_model(f"models:/{tr.registered_model}@{alias}")
