"""The MLflow store: which tracking/registry URI, which experiment, and the names xpz writes there.

The only process-wide state touched by xpz.tracking is MLflow's tracking URI, set by `configure` (pyfunc
logging and `models:/` URIs resolve through it). Embedded default: `sqlite:///mlflow.db` with artifacts
under `./mlruns`; the usual `MLFLOW_TRACKING_URI` variable wins over params.yaml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

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


def resolve_uri(cfg: TrackingConfig, tracking_uri: str | None = None) -> str:
    """The tracking URI: the argument, else `MLFLOW_TRACKING_URI`, else params (`tracking.uri`)."""
    return tracking_uri or os.environ.get(TRACKING_URI_ENV) or cfg.uri


def configure(cfg: TrackingConfig, tracking_uri: str | None = None) -> Tracking:
    """Point MLflow at the configured store and make sure the experiment exists.

    The URI is, in order: the `tracking_uri` argument, `MLFLOW_TRACKING_URI`, `cfg.uri`. For a local
    store (sqlite or file) a missing experiment is created with `cfg.artifact_location` as its
    artifact root; a remote server keeps its own artifact settings. A sqlite store copied or moved with
    its project has its recorded artifact paths pointed at the copy (`xpz.tracking.relocate`).

    A tracking server (http/https) is checked first with one request: down, refusing the credentials
    (401, MLFLOW_TRACKING_USERNAME/_PASSWORD) or forbidding reads (403) raises
    `xpz.servers.ServerError` (an `InputError` naming the URI and the fix) within seconds.
    """
    from xpz.servers import check_mlflow
    from xpz.tracking.relocate import localize_artifacts

    uri = resolve_uri(cfg, tracking_uri)
    registry_uri = os.environ.get(REGISTRY_URI_ENV) or uri
    for server in dict.fromkeys([uri, registry_uri]):
        check_mlflow(server)
    localize_artifacts(uri)  # a moved/copied checkout uses its own artifacts (xpz.tracking.relocate)
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
            existing = client.get_experiment_by_name(cfg.experiment)
            assert existing is not None  # it exists: creating it just failed for that reason
            experiment_id = existing.experiment_id
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
