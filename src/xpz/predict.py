"""The single place that turns model outputs into redshifts and 68% intervals.

A regression model's output is z itself (no interval: NaN). A softmax-head model outputs the
calibrated p(z | x) over fixed bins (see `xpz.model.RedshiftPosterior`); the point estimate is its
median and the interval its central 68% (16th to 84th percentile), each read off the piecewise-linear
CDF (probability spread uniformly within a bin).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xpz.spectra import N_FLUX

INTERVAL = 0.68  # central probability mass between z_lower and z_upper
PREDICTION_COLUMNS = ("z", "z_lower", "z_upper")


def posterior_quantiles(probs: np.ndarray, edges: np.ndarray, quantiles) -> np.ndarray:
    """(n, len(quantiles)) quantiles of binned distributions (rows of `probs`, bins `edges`)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    edges = np.asarray(edges, dtype=np.float64)
    cdf = np.concatenate([np.zeros((len(p), 1)), np.cumsum(p, axis=1)], axis=1)
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    out = np.empty((len(p), len(quantiles)))
    rows = np.arange(len(p))
    for j, q in enumerate(quantiles):
        # first edge whose CDF reaches q (>= 1 since cdf[:, 0] = 0 < q)
        hi = np.clip(np.argmax(cdf >= q, axis=1), 1, len(edges) - 1)
        c0, c1 = cdf[rows, hi - 1], cdf[rows, hi]
        frac = np.where(c1 > c0, (q - c0) / np.maximum(c1 - c0, 1e-300), 0.5)
        out[:, j] = edges[hi - 1] + np.clip(frac, 0.0, 1.0) * (edges[hi] - edges[hi - 1])
    return out


def redshifts_from_output(output: np.ndarray, edges: np.ndarray | None, interval: float = INTERVAL):
    """(z, z_lower, z_upper) arrays from raw model output (edges None for a regression model)."""
    output = np.asarray(output)
    if edges is None or output.ndim == 1 or output.shape[1] == 1:
        z = output.reshape(-1).astype(np.float64)
        nan = np.full_like(z, np.nan)
        return z, nan, nan
    tail = (1.0 - interval) / 2.0
    q = posterior_quantiles(output, edges, (0.5, tail, 1.0 - tail))
    return q[:, 0], q[:, 1], q[:, 2]


def predict_redshift(model, fluxes: np.ndarray, batch_size: int = 1024) -> pd.DataFrame:
    """Raw (n, 186) fluxes -> DataFrame[z, z_lower, z_upper] (the central 68% interval)."""
    from xpz.model import posterior_layer

    x = np.asarray(fluxes, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_FLUX:
        raise ValueError(f"predict_redshift: expected (n, {N_FLUX}) fluxes, got shape {x.shape}")
    if len(x) == 0:
        return pd.DataFrame({c: np.empty(0) for c in PREDICTION_COLUMNS})
    output = model.predict(x, batch_size=batch_size, verbose=0)
    layer = posterior_layer(model)
    edges = None if layer is None else np.asarray(layer.edges)
    z, lo, hi = redshifts_from_output(output, edges)
    return pd.DataFrame({"z": z, "z_lower": lo, "z_upper": hi})
