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
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput

from xpz.errors import InputError
from xpz.spectra import FLUX_COLUMNS, FLUX_DTYPE, N_FLUX

if TYPE_CHECKING:
    pass
from xpz.tracking.runs import flatten
from xpz.tracking.store import KERAS_ARTIFACT, MODEL_NAME, Tracking


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
    for module in ("xpz.model.scaling", "xpz.model.architectures"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


class XpzRedshiftModel(mlflow.pyfunc.PythonModel):
    """Raw Gaia XP fluxes -> DataFrame[z, z_lower, z_upper, ood_score, eligible], via
    `xpz.model.posterior.predict_redshift` (`eligible` False: not like the training galaxies).

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
        from xpz.model.posterior import predict_redshift

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

    The xpz package is bundled as code (`code_paths`), requirements are pinned to this environment,
    and the signature (186 float32 flux columns -> z, z_lower, z_upper) comes from `input_example`.
    """
    from mlflow.models import infer_signature

    from xpz.model.posterior import predict_redshift

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

