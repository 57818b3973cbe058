"""MLflow tracking, dataset lineage, the pyfunc wrapper, the registry and champion/challenger promotion.

Modules: `store` (URI, experiment, names), `runs` (params, metrics, figures, trials), `lineage`
(git, DVC, split digests), `pyfunc` (the logged model), `registry` (versions, aliases, promotion).
Everything public is re-exported here, so `from xpz import tracking; tracking.register(...)` reads as
one API. May import: xpz core (config, errors, spectra, files) and, lazily, xpz.model (to predict);
never the CLI, the flows or Prefect.

Everything here takes the run id (and the configured `Tracking` handle) explicitly: no function relies on
MLflow's "active run", so several pipelines can log into one store at the same time. The only process-wide
state touched is MLflow's tracking URI, set by `configure` (pyfunc logging and `models:/` URIs resolve
through it).

Store layout (embedded default): `sqlite:///mlflow.db` with artifacts under `./mlruns`; the usual
`MLFLOW_TRACKING_URI` variable wins over params.yaml.

Names written by this module (the contract with the UI, `xpz models` and the flows):
  run tags       xpz.git_commit (+ mlflow.source.git.commit), xpz.git_dirty, xpz.data_md5,
                 xpz.tune_search, xpz.host, xpz.pid (tuning runs), xpz.end_reason,
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
                 across_splits | unknown_split), xpz.split_digest.test, xpz.champion_guard (lock: the
                 champion was read and moved under the store's file lock | verify: on a tracking
                 server, checked after the move | verify-superseded: a concurrent better candidate won)
"""

from __future__ import annotations

from xpz.tracking.cards import (  # noqa: F401
    describe_registration,
    describe_run,
    run_description,
)
from xpz.tracking.lineage import (  # noqa: F401
    dvc_md5,
    git_commit,
    lineage_tags,
    log_lineage,
)
from xpz.tracking.pyfunc import (  # noqa: F401
    LoggedModel,
    XpzRedshiftModel,
    as_flux_array,
    load_keras_model,
    log_model,
    pip_requirements,
    run_model,
)
from xpz.tracking.registry import (  # noqa: F401
    Registration,
    VersionInfo,
    aliases,
    existing_registration,
    list_models,
    load_champion,
    models_table,
    promote,
    register,
)
from xpz.tracking.runs import (  # noqa: F401
    close_orphaned_runs,
    config_params,
    end_run,
    flatten,
    log_bin_table,
    log_config,
    log_evaluation,
    log_figures,
    log_frame,
    log_history,
    log_metrics,
    log_params,
    log_trial,
    process_tags,
    run,
    run_history,
    set_tags,
    split_baselines,
    start_run,
    trial_logger,
)
from xpz.tracking.store import (  # noqa: F401
    CHALLENGER,
    CHAMPION,
    DIGEST_TAG,
    HISTORY_TAG,
    KERAS_ARTIFACT,
    LISTED_METRICS,
    MODEL_NAME,
    REGISTRY_URI_ENV,
    SPLIT_CONTEXT,
    SPLITS,
    TRACKING_URI_ENV,
    Tracking,
    configure,
    resolve_uri,
)

__all__ = [
    'aliases',
    'existing_registration',
    'CHALLENGER',
    'CHAMPION',
    'DIGEST_TAG',
    'HISTORY_TAG',
    'KERAS_ARTIFACT',
    'LISTED_METRICS',
    'LoggedModel',
    'MODEL_NAME',
    'REGISTRY_URI_ENV',
    'Registration',
    'SPLITS',
    'SPLIT_CONTEXT',
    'TRACKING_URI_ENV',
    'Tracking',
    'VersionInfo',
    'XpzRedshiftModel',
    'as_flux_array',
    'close_orphaned_runs',
    'config_params',
    'configure',
    'describe_registration',
    'describe_run',
    'dvc_md5',
    'end_run',
    'flatten',
    'git_commit',
    'lineage_tags',
    'list_models',
    'load_champion',
    'load_keras_model',
    'log_bin_table',
    'log_config',
    'log_evaluation',
    'log_figures',
    'log_frame',
    'log_history',
    'log_lineage',
    'log_metrics',
    'log_model',
    'log_params',
    'log_trial',
    'models_table',
    'pip_requirements',
    'process_tags',
    'promote',
    'register',
    'resolve_uri',
    'run',
    'run_description',
    'run_history',
    'run_model',
    'set_tags',
    'split_baselines',
    'start_run',
    'trial_logger',
]
