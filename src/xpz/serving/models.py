"""Which model to apply and how it is loaded: references -> a `Predictor` loaded once.

Accepted references: `models:/<name>@<alias>`, `models:/<name>/<version>`, `models:/<model_id>`,
`runs:/<run_id>/<path>`, a local pyfunc folder, or a `.keras` file. An alias is resolved once to a
version, so a promotion while a long job runs cannot mix two models in one output. Anything that
does not exist is an `InputError` naming the alias, version, run or path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from xpz.errors import InputError

DEFAULT_MODEL_BATCH = 1024
PREDICTION_COLUMNS = ("z", "z_lower", "z_upper")
ELIGIBILITY_COLUMNS = ("ood_score", "eligible")  # xpz.model.ood; NaN / True from a model without them


@dataclass
class Predictor:
    """A model loaded once: `predict(fluxes) -> DataFrame[z, z_lower, z_upper]`, batch-aligned."""

    name: str
    version: str
    uri: str  # what was loaded (an alias resolved to its version)
    batch_size: int
    _predict: Callable[[np.ndarray], object]
    keras_model: object = None  # the Keras model, when known (for p(z): `predict_with_pdf`)

    def predict_with_pdf(self, fluxes: np.ndarray):
        """(predictions, bin edges, CDFs at the edges) from the Keras model, batch-aligned like
        `predict`; `InputError` for a model that gives no p(z)."""
        from xpz.model.posterior import predict_posterior

        if self.keras_model is None:
            raise InputError(f"model {self.uri}: not an xpz Keras model, so it gives no p(z) (--pdf)")
        x = np.ascontiguousarray(fluxes, dtype=np.float32)
        n = len(x)
        padded = -(-n // self.batch_size) * self.batch_size
        if padded > n:
            x = np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)])
        frame, edges, cdf = predict_posterior(self.keras_model, x, batch_size=self.batch_size)
        if cdf is None:
            raise InputError(f"model {self.uri}: a regression model gives no p(z) (--pdf)")
        return _as_prediction_frame(frame, padded).iloc[:n].reset_index(drop=True), edges, cdf[:n]

    def predict(self, fluxes: np.ndarray) -> pd.DataFrame:
        """Predictions for (n, 186) fluxes, fed in whole batches (the last padded; see module doc)."""
        x = np.ascontiguousarray(fluxes, dtype=np.float32)
        n = len(x)
        if n == 0:
            return _as_prediction_frame(pd.DataFrame({c: np.empty(0) for c in PREDICTION_COLUMNS}), 0)
        padded = -(-n // self.batch_size) * self.batch_size
        if padded > n:
            x = np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)])
        return _as_prediction_frame(self._predict(x), padded).iloc[:n].reset_index(drop=True)


def _as_prediction_frame(output: object, n: int) -> pd.DataFrame:
    """A pyfunc's output (xpz: DataFrame[z, z_lower, z_upper]; others: z alone) as the three columns."""
    if isinstance(output, pd.DataFrame):
        frame = output if "z" in output.columns else output.rename(columns={output.columns[0]: "z"})
    else:
        frame = pd.DataFrame({"z": np.asarray(output, dtype=np.float64).reshape(n, -1)[:, 0]})
    out = pd.DataFrame(
        {c: frame[c].to_numpy(np.float64) if c in frame else np.full(n, np.nan) for c in PREDICTION_COLUMNS}
    )
    out["ood_score"] = frame["ood_score"].to_numpy(np.float64) if "ood_score" in frame else np.full(n, np.nan)
    out["eligible"] = frame["eligible"].to_numpy(bool) if "eligible" in frame else np.ones(n, bool)
    if len(out) != n:
        raise RuntimeError(f"model returned {len(out)} predictions for {n} spectra")
    return out


def _client(tracking_uri: str | None):
    """A client of the store; a local sqlite store must exist (MLflow would create an empty one), a
    tracking server must answer and accept the credentials (`xpz.servers.check_mlflow`)."""
    import mlflow
    from mlflow import MlflowClient

    from xpz.servers import check_mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    check_mlflow(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.exists():
            raise InputError(
                f"no MLflow store at {uri} ({path.absolute()} does not exist); "
                "set MLFLOW_TRACKING_URI or --tracking-uri to the store holding the model"
            )
        from xpz.tracking.relocate import localize_artifacts

        localize_artifacts(uri)  # a moved/copied project uses its own artifacts, or stops naming the path
    return MlflowClient(tracking_uri=uri)


def _store(tracking_uri: str | None) -> str:
    import mlflow

    return tracking_uri or mlflow.get_tracking_uri()


def _aliases(client, name: str) -> str:
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except Exception:
        return "unknown"
    return ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"


def _registered_names(client) -> str:
    try:
        names = [m.name for m in client.search_registered_models(max_results=20)]
    except Exception:
        return "unknown"
    return ", ".join(names) or "none"


def _raise_server_trouble(err: Exception, tracking_uri: str | None) -> None:
    """Raise `xpz.servers.ServerError` when an MLflow error means 401, 403 or a dead server."""
    from xpz.servers import explain_mlflow_error

    explained = explain_mlflow_error(err, _store(tracking_uri))
    if explained is not None:
        raise explained from None


def resolve_model(model: str, tracking_uri: str | None = None) -> tuple[str, str, str]:
    """(URI to load, model name, model version) for a model reference; `InputError` naming the
    alias, version, run or path that does not exist."""
    from mlflow.exceptions import MlflowException

    if model.startswith("models:/"):
        client = _client(tracking_uri)
        ref = model[len("models:/") :].strip("/")
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                try:
                    client.get_registered_model(name)
                except MlflowException as err:
                    _raise_server_trouble(err, tracking_uri)
                    raise InputError(
                        f"model {model!r}: no registered model {name!r} in {_store(tracking_uri)} "
                        f"(registered: {_registered_names(client)})"
                    ) from None
                try:
                    version = str(client.get_model_version_by_alias(name, alias).version)
                except MlflowException as err:
                    _raise_server_trouble(err, tracking_uri)
                    raise InputError(
                        f"model {model!r}: registered model {name!r} has no alias {alias!r} "
                        f"(its aliases: {_aliases(client, name)})"
                    ) from None
                return f"models:/{name}/{version}", name, version
            if "/" in ref:
                name, version = ref.rsplit("/", 1)
                try:
                    client.get_model_version(name, version)
                except MlflowException as err:
                    _raise_server_trouble(err, tracking_uri)
                    raise InputError(
                        f"model {model!r}: registered model {name!r} has no version {version!r} "
                        f"in {_store(tracking_uri)}"
                    ) from None
                return model, name, version
            try:  # a LoggedModel id (models:/m-...)
                logged = client.get_logged_model(ref)
            except MlflowException as err:
                _raise_server_trouble(err, tracking_uri)
                raise InputError(
                    f"model {model!r}: no logged model {ref!r} in {_store(tracking_uri)}; use "
                    f"models:/<name>@<alias> or models:/<name>/<version> (registered: {_registered_names(client)})"
                ) from None
            return model, logged.name, ref
        except InputError:
            raise
        except MlflowException as err:
            _raise_server_trouble(err, tracking_uri)
            raise InputError(
                f"model {model!r}: the tracking store {_store(tracking_uri)} is not usable: {err.message}"
            ) from None
    if model.startswith("runs:/"):
        parts = model[len("runs:/") :].strip("/").split("/", 1)
        from mlflow.exceptions import MlflowException

        try:
            _client(tracking_uri).get_run(parts[0])
        except MlflowException as err:
            _raise_server_trouble(err, tracking_uri)
            raise InputError(f"model {model!r}: no run {parts[0]!r} in {_store(tracking_uri)}") from None
        return model, parts[1] if len(parts) > 1 else "model", parts[0]
    path = Path(model)
    if not path.exists():
        raise InputError(
            f"model {model!r}: not found (expected models:/<name>@<alias>, models:/<name>/<version>, "
            "runs:/<run_id>/<path>, an MLflow model folder or a .keras file)"
        )
    if path.suffix == ".keras":
        return str(path), path.stem, ""
    name, version = folder_identity(path, tracking_uri)
    return str(path), name, version


def folder_identity(path: Path, tracking_uri: str | None = None) -> tuple[str, str]:
    """(registered name, version) of a local MLflow model folder: from `registered_model_meta` (written
    when MLflow downloads `models:/<name>/<version>`), else from the registry of `tracking_uri` (the
    version of the LoggedModel, or run, named in the folder's `MLmodel`), else (folder name, "")."""
    import yaml

    meta = path / "registered_model_meta"
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
        doc = yaml.safe_load(meta.read_text())
        if doc.get("model_name") and doc.get("model_version") is not None:
            return str(doc["model_name"]), str(doc["model_version"])
    try:
        mlmodel = yaml.safe_load((path / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        mlmodel = {}
    run_id, model_id = mlmodel.get("run_id"), mlmodel.get("model_id")
    if (run_id or model_id) and (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        try:  # the store is optional for a local folder: any trouble means "not known"
            client = _client(tracking_uri)
            run_id = run_id or client.get_logged_model(model_id).source_run_id
            found = client.search_model_versions(f"run_id = '{run_id}'") if run_id else []
        except Exception:  # noqa: BLE001
            found = []
        mine = [mv for mv in found if not model_id or getattr(mv, "model_id", None) in (None, model_id)]
        if mine:
            best = min(mine, key=lambda mv: (mv.name, int(mv.version)))
            return str(best.name), str(best.version)
    return path.name, ""


@contextlib.contextmanager
def use_tracking_uri(uri: str | None) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to `uri` for a block (no-op for None), then restored
    exactly: `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which is put back as it was."""
    if not uri:
        yield
        return
    import mlflow
    from mlflow.tracking._tracking_service import utils as _tracking_utils

    saved_uri = _tracking_utils._tracking_uri  # None when never set
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)  # type: ignore[arg-type]  # None: back to unset
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def load_predictor(model: str, tracking_uri: str | None = None) -> Predictor:
    """Load a model once (see `resolve_model` for the accepted references)."""
    uri, name, version = resolve_model(model, tracking_uri)
    if uri.endswith(".keras") and Path(uri).is_file():
        import keras

        import xpz.model.architectures  # noqa: F401  (registers the custom layers)
        import xpz.model.scaling  # noqa: F401
        from xpz.model.posterior import predict_redshift

        keras_model = keras.saving.load_model(uri, compile=False)
        batch = DEFAULT_MODEL_BATCH
        return Predictor(name, version, uri, batch, lambda x: predict_redshift(keras_model, x, batch_size=batch),
                         keras_model)  # fmt: skip

    import mlflow

    with use_tracking_uri(tracking_uri):
        try:
            pyfunc = mlflow.pyfunc.load_model(uri)
        except Exception as err:
            raise InputError(f"model {model!r}: cannot load {uri}: {err}") from None
    keras_model = None
    try:
        wrapper = pyfunc.unwrap_python_model()
        batch = int(getattr(wrapper, "batch_size", DEFAULT_MODEL_BATCH))
        keras_model = getattr(wrapper, "keras_model", None)
    except Exception:  # not a python_model flavour
        batch = DEFAULT_MODEL_BATCH
    return Predictor(name, version, uri, batch, pyfunc.predict, keras_model)


@lru_cache(maxsize=4)
def cached_predictor(model: str, tracking_uri: str | None = None) -> Predictor:
    """One loaded model per process and reference (Dask workers reuse it across partitions)."""
    return load_predictor(model, tracking_uri)


def default_tracking_uri(configured: str | None) -> str | None:
    """`MLFLOW_TRACKING_URI` wins over params.yaml (`tracking.uri`), as in `xpz.tracking`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured
