"""The pyfunc model: raw Gaia XP fluxes in, z and its interval out; how it is logged and loaded back.

The class path `xpz.tracking.XpzRedshiftModel` is recorded (pickled by reference) in every logged model:
`xpz.tracking` re-exports it, so versions logged before the package layout still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from xpz.errors import InputError, describe_rows
from xpz.spectra import FLUX_COLUMNS, FLUX_DTYPE, N_FLUX, NO_TOTAL_FLUX_REASON, nonpositive_total
from xpz.tracking.runs import flatten
from xpz.tracking.store import KERAS_ARTIFACT, MODEL_NAME, Tracking

# --------------------------------------------------------------------------------- pyfunc model


class ModelInputError(MlflowException, InputError):
    """A model input the served model cannot answer. An `InputError` (the CLI exits 2) and an
    `MlflowException` with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers with HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _flux_frame(model_input: Any) -> pd.DataFrame | np.ndarray:
    """A DataFrame for named input (a frame, a {column: values} mapping, records), else an array."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, Mapping):
        if len(model_input) == 1 and not str(next(iter(model_input))).startswith("flux_"):
            return _flux_frame(next(iter(model_input.values())))  # {"inputs": ...}-style wrapper
        return pd.DataFrame({k: np.atleast_1d(np.asarray(v)) for k, v in model_input.items()})
    if isinstance(model_input, list) and model_input and isinstance(model_input[0], Mapping):
        return pd.DataFrame.from_records(model_input)
    return np.asarray(model_input)


def _check_real(values: np.ndarray, what: str) -> None:
    if values.dtype.kind not in "iuf":
        raise InputError(f"model input: {what} must be real numbers, got dtype {values.dtype}")


def as_flux_array(model_input: Any) -> np.ndarray:
    """Raw fluxes from model input as an (n, 186) float32 array: the input contract of the served model.

    A DataFrame (or a {column: values} mapping, or a list of records) is matched BY NAME on the 186
    columns `flux_000..flux_185` (`xpz.spectra.FLUX_COLUMNS`), in any order; other columns (source_id,
    ...) are ignored. Only an unnamed frame (columns 0..185) or an (n, 186) / (186,) array is taken by
    position. Any real dtype (int, float32, float64) is accepted and cast to float32.
    Raises `InputError` naming the columns and rows for: a missing flux column, a non-numeric column,
    a wrong shape, a request without rows, a missing value (absent key, null or NaN) or a non-finite
    one (inf, or beyond float32's range), and a spectrum whose total flux is <= 0
    (`xpz.spectra.nonpositive_total`: the network's input, the spectrum over its total flux, is undefined).
    Column names are case-sensitive, as in the file readers (`xpz.data.io`).
    """
    data = _flux_frame(model_input)
    if isinstance(data, pd.DataFrame):
        if len(data) == 0:
            raise InputError(_NO_ROWS)
        named: list[Any] = list(FLUX_COLUMNS)
        if list(data.columns) == list(range(N_FLUX)):
            named = list(range(N_FLUX))  # an unnamed table, e.g. JSON "inputs" as lists
        missing = [c for c in named if c not in data.columns]
        if missing:
            raise InputError(
                f"model input: {len(missing)} of the {N_FLUX} flux columns flux_000..flux_185 are missing "
                f"({describe_rows(missing)}); columns are matched by name, other columns are ignored"
                + _case_hint(missing, data.columns)
            )
        frame = data.loc[:, named]
        if frame.shape[1] != N_FLUX:
            dupes = sorted({str(c) for c in data.columns[data.columns.duplicated()]})
            raise InputError(f"model input: flux columns {describe_rows(dupes)} appear more than once")
        bad = [str(c) for c in frame.columns if frame[c].dtype.kind not in "iuf"]
        if bad:
            raise InputError(f"model input: flux columns {describe_rows(bad)} are not numeric "
                             f"(dtype {frame[bad[0]].dtype}); fluxes must be real numbers")  # fmt: skip
        rows = list(frame.index)
        values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = data
        if values.size == 0:
            raise InputError(_NO_ROWS)
        _check_real(values, "fluxes")
        if values.ndim == 1 and values.shape[0] == N_FLUX:
            values = values.reshape(1, N_FLUX)
        if values.ndim != 2 or values.shape[1] != N_FLUX:
            raise InputError(f"model input: expected shape (n, {N_FLUX}) of raw fluxes, got {values.shape}")
        rows = list(range(len(values)))
    with np.errstate(over="ignore", invalid="ignore"):
        # float32 input as it is (nothing can overflow); else via float64, where beyond float32 becomes inf
        fluxes = (
            values if values.dtype == FLUX_DTYPE else np.asarray(values, dtype=np.float64).astype(FLUX_DTYPE)
        )
    finite = np.isfinite(fluxes)
    if not finite.all():
        absent = np.isnan(fluxes)  # an absent key or a null arrives as NaN: a missing value
        parts = [
            f"{what} in {_cells(mask, rows)}"
            for what, mask in (
                ("missing value (absent key, null or NaN)", absent),
                ("inf or beyond float32", ~finite & ~absent),
            )
            if mask.any()
        ]
        raise InputError(
            f"model input: missing or non-finite flux in {_cells(~finite, rows)}; {'; '.join(parts)}; "
            "no redshift is given for such a spectrum"
        )
    empty = nonpositive_total(fluxes)
    if empty.any():
        raise InputError(
            f"model input: {NO_TOTAL_FLUX_REASON} in rows {describe_rows([rows[i] for i in np.flatnonzero(empty)])}; "
            "the model's input is the spectrum divided by its total flux, so no redshift is given for it"
        )
    return np.ascontiguousarray(fluxes)


_NO_ROWS = "model input: the request holds no rows (no spectra to predict)"


def _cells(mask: np.ndarray, rows: list[Any]) -> str:
    """'rows 2, 3, columns flux_050, flux_051' for the True cells of an (n, 186) mask."""
    bad_rows = [rows[i] for i in np.flatnonzero(mask.any(axis=1))]
    bad_cols = [FLUX_COLUMNS[j] for j in np.flatnonzero(mask.any(axis=0))]
    return f"rows {describe_rows(bad_rows)}, columns {describe_rows(bad_cols)}"


def _case_hint(missing: list[Any], columns: Any) -> str:
    """A hint when the missing flux columns are there in another case (FLUX_000): names are case-sensitive."""
    lower = {str(c).lower(): str(c) for c in columns if str(c) != str(c).lower()}
    found = [lower[str(c)] for c in missing if str(c) in lower]
    if not found:
        return ""
    return (
        f"; column names are case-sensitive: found {describe_rows(found)}, expected the lower-case "
        "flux_000..flux_185"
    )


def json_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The served model's output with every non-finite float (NaN, inf) as None, so that MLflow's
    scoring server writes JSON null rather than NaN / Infinity (not JSON): e.g. `ood_score` of a model
    trained with `eligibility.enabled=false` is NaN. Columns without such a value keep their dtype."""
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            ok = np.isfinite(out[c].to_numpy())
            if not ok.all():
                out[c] = out[c].astype(object).where(ok, None)
    return out


def _import_custom_objects() -> None:
    """Register xpz's custom Keras objects: `xpz.model.saving` (the one place that does it), or, in
    the code bundled with models logged before it existed, the modules that registered them then."""
    try:
        importlib.import_module("xpz.model.saving")
        return
    except ModuleNotFoundError as err:
        if err.name != "xpz.model.saving":
            raise
    for module in ("xpz.model.scaling", "xpz.model.architectures"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


class XpzRedshiftModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]  # lazily loaded submodule
    """Raw Gaia XP fluxes -> DataFrame[z, z_lower, z_upper, ood_score, eligible], via
    `xpz.model.posterior.predict_redshift` (`eligible` False: not like the training galaxies).

    The Keras model (scaling layer inside) is the artifact `keras_model`. Input: see `as_flux_array`
    (flux_000..flux_185 by name, extra columns ignored, any real dtype); input it cannot answer raises
    `ModelInputError` (HTTP 400 from `mlflow models serve`), never a number.
    """

    def __init__(self, batch_size: int = 1024) -> None:
        self.batch_size = batch_size
        self._model = None

    def load_context(self, context: Any) -> None:
        import keras

        _import_custom_objects()
        self._model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    @property
    def keras_model(self) -> Any:
        """The loaded Keras model (after `load_context`)."""
        return self._model

    # `pd.DataFrame` is a hint MLflow 3 derives no schema from (arrays and mappings pass too); the logged
    # signature has no input schema (see `log_model`): the input arrives as sent, `as_flux_array` checks it.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from xpz.model.posterior import predict_redshift

        try:
            fluxes = as_flux_array(model_input)
        except InputError as err:
            raise ModelInputError(str(err)) from None
        batch_size = int((params or {}).get("batch_size", self.batch_size))
        return json_safe(predict_redshift(self._model, fluxes, batch_size=batch_size))

    def __getstate__(self) -> dict[str, Any]:  # never pickle the loaded Keras model
        state = dict(self.__dict__)
        state["_model"] = None
        return state


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model (the installed versions of what it imports)."""
    reqs = []
    for dist in (
        "mlflow",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "numpy",
        "pandas",
        "pyarrow",
        "scipy",
        "pydantic",
        "pyyaml",
    ):
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if any(r.startswith("tensorflow-cpu==") for r in reqs):
        reqs = [r for r in reqs if not r.startswith("tensorflow==")]
    return reqs


def _package_dir() -> str:
    return str(Path(__file__).resolve().parents[1])  # the xpz package


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

    The xpz package is bundled as code (`code_paths`), requirements are pinned to this environment.
    The signature has outputs only: an input schema would make MLflow enforce it before `predict`
    (a tensor spec takes columns by position and refuses float64; a column spec refuses ints, turns
    arrays into empty frames and cannot ignore extra columns), so `as_flux_array` is the one contract
    on every path (pyfunc, `mlflow models serve` with JSON or CSV bodies, `xpz predict`).
    """
    from mlflow.models import ModelSignature, infer_signature

    from xpz.model.posterior import predict_redshift

    client = tr.client
    example = as_flux_array(input_example)
    wrapper = XpzRedshiftModel(batch_size=batch_size)
    outputs = infer_signature(example, predict_redshift(keras_model, example)).outputs
    signature = ModelSignature(inputs=None, outputs=outputs)
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
            input_example=pd.DataFrame(example, columns=list(FLUX_COLUMNS)),
        )
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
    return LoggedModel(model_id=logged.model_id, model_uri=f"models:/{logged.model_id}")


def run_model(tr: Tracking, run_id: str) -> LoggedModel:
    """The (last) model logged by a run."""
    try:
        run = tr.client.get_run(run_id)
    except MlflowException:
        raise InputError(f"no MLflow run {run_id!r} in {tr.tracking_uri}") from None
    outputs = list(getattr(run.outputs, "model_outputs", None) or [])
    if not outputs:
        raise InputError(f"MLflow run {run_id} has no logged model")
    model_id = max(outputs, key=lambda o: o.step).model_id
    return LoggedModel(model_id=model_id, model_uri=f"models:/{model_id}")


def load_keras_model(model_uri: str) -> Any:
    """The Keras model inside an xpz pyfunc model (`models:/<id>`, `models:/<name>@champion`, ...)."""
    try:
        wrapper = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except MlflowException as err:
        raise InputError(f"model {model_uri!r}: {err.message}") from None
    if not isinstance(wrapper, XpzRedshiftModel):
        raise InputError(f"{model_uri} is not an xpz redshift model")
    return wrapper.keras_model
