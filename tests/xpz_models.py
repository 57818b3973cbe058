"""Helpers for the prediction / serving / scale-out tests: tiny real models in a real MLflow store.

The model is an xpz CNN (`xpz.model.architectures.build_model`, softmax-z head, fitted scaling inside) with a few
hundred weights, logged through `xpz.tracking.log_model` (the real `XpzRedshiftModel` pyfunc) and
registered with `xpz.tracking.register` (first model -> alias `champion`) in a sqlite store in a
temporary folder.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINY_HYPERPARAMETERS = {
    "conv_layers": 1, "filters_0": 4, "kernel_0": 3,
    "dense_layers": 1, "units_0": 8,
    "activation": "relu", "loss": "crossentropy", "optimizer": "adam", "learning_rate": 1e-3,
}  # fmt: skip
MODEL_NAME = "xpz-predict-test"


@dataclass
class Registered:
    tracking_uri: str
    name: str
    version: str
    root: Path

    @property
    def champion(self) -> str:
        return f"models:/{self.name}@champion"


def tiny_keras_model(fluxes: np.ndarray, seed: int = 0):
    """A tiny softmax-head CNN; the posterior gets a non-trivial prior so intervals vary per galaxy."""
    import keras

    from xpz.config import ModelConfig
    from xpz.model.architectures import build_model, posterior_layer, z_bin_edges
    from xpz.model.scaling import fit_scaler

    keras.utils.set_random_seed(seed)
    cfg = ModelConfig()
    model = build_model(TINY_HYPERPARAMETERS, cfg, fit_scaler(np.asarray(fluxes, np.float32), normalize=True))
    edges = z_bin_edges(cfg)
    centres = 0.5 * (edges[1:] + edges[:-1])
    posterior_layer(model).set_calibration(
        log_prior=-(((centres - 0.15) / 0.1) ** 2), alpha=-1.0, temperature=0.3
    )
    return model


def model_predict_redshifts(model, fluxes: np.ndarray, batch_size: int = 1024):
    """DataFrame[z, z_lower, z_upper] from plain `model.predict` (not the compiled inference function
    every xpz prediction path uses): the reference the paths are checked against to 1e-6."""
    import pandas as pd

    from xpz.model.architectures import posterior_layer
    from xpz.model.posterior import redshifts_from_output

    output = model.predict(np.asarray(fluxes, np.float32), batch_size=batch_size, verbose=0)
    layer = posterior_layer(model)
    edges = None if layer is None else np.asarray(layer.edges)
    extra = {} if layer is None else layer.point_estimate()
    z, lo, hi = redshifts_from_output(output, edges, **extra)
    return pd.DataFrame({"z": z, "z_lower": lo, "z_upper": hi})


def register_tiny_model(root: Path, fluxes: np.ndarray, name: str = MODEL_NAME) -> Registered:
    """Log + register a tiny model in `sqlite:///<root>/mlflow.db` (artifacts in <root>/mlruns)."""
    from xpz import tracking
    from xpz.config import TrackingConfig
    from xpz.serving.batch import use_tracking_uri

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = TrackingConfig(
        experiment="xpz-predict-test", registered_model=name, artifact_location=str(root / "mlruns")
    )
    with use_tracking_uri(uri):  # configure() sets the process-wide URI; restored afterwards
        tr = tracking.configure(cfg, tracking_uri=uri)
        model = tiny_keras_model(fluxes)
        with tracking.run(tr, "tiny-model") as run_id:
            logged = tracking.log_model(tr, run_id, model, np.asarray(fluxes[:5], np.float32))
            tracking.log_metrics(tr, run_id, {"test_mae": 0.05})
            reg = tracking.register(tr, run_id, logged, {"test_mae": 0.05})
    return Registered(uri, name, str(reg.version), root)


_SHARED: dict[str, Registered] = {}


def shared_registered(tmp_path_factory, fluxes: np.ndarray) -> Registered:
    """One registered tiny model per test session (prediction, serving and scale-out tests share it)."""
    if "model" not in _SHARED:
        _SHARED["model"] = register_tiny_model(tmp_path_factory.mktemp("xpz-models"), fluxes)
    return _SHARED["model"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smooth_coefficients(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random but smooth XP coefficients: decaying Hermite amplitudes around a positive mean shape."""
    rng = np.random.default_rng(seed)
    k = np.arange(55)
    decay = np.exp(-k / 6.0)
    out = []
    for _ in range(2):
        base = np.where(k % 2 == 0, 1.0, 0.3) * decay * 20.0
        out.append(base[None, :] * rng.uniform(0.5, 2.0, (n, 1)) + rng.normal(0, 1, (n, 55)) * decay)
    return out[0], out[1]


def fit_coefficients(fluxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares DR3 XP coefficients (gaiaxpy's bases) reproducing sampled fluxes (80 BP + 106 RP)."""
    from xpz.data.xp import design_matrix
    from xpz.spectra import N_BP

    x = np.asarray(fluxes, np.float64)
    coeffs = []
    for band, cols in (("bp", slice(0, N_BP)), ("rp", slice(N_BP, None))):
        dm = design_matrix(band)  # (55, n_pixels)
        sol, *_ = np.linalg.lstsq(dm.T, x[:, cols].T, rcond=None)
        coeffs.append(sol.T)
    return coeffs[0], coeffs[1]


def cell(values: np.ndarray) -> str:
    """One archive array cell, as the Gaia archive's CSV writes it."""
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def write_gaia_csv(path: Path, ids: np.ndarray, bp: np.ndarray, rp: np.ndarray) -> Path:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "source_id": ids,
            "solution_id": 375316653866487564,
            "bp_n_parameters": 55,
            "bp_coefficients": [cell(r) for r in bp],
            "rp_n_parameters": 55,
            "rp_coefficients": [cell(r) for r in rp],
        }
    )
    with path.open("w") as fh:
        fh.write("# Gaia DR3 xp_continuous_mean_spectrum (test file)\n")
        frame.to_csv(fh, index=False)
    return path


def write_gaia_ecsv(path: Path, ids: np.ndarray, bp: np.ndarray, rp: np.ndarray) -> Path:
    from astropy.table import Table

    table = Table()
    table["source_id"] = np.asarray(ids, np.int64)
    table["bp_coefficients"] = bp
    table["rp_coefficients"] = rp
    table.write(path, format="ascii.ecsv", delimiter=",", overwrite=True)
    return path
