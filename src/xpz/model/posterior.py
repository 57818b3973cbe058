"""The single place that turns model outputs into redshifts and 68% intervals.

A regression model's output is z itself (no interval: NaN). A softmax-head model outputs the
calibrated p(z | x) over fixed bins (see `xpz.model.architectures.RedshiftPosterior`); z and the interval are
quantiles of it, read off the piecewise-linear CDF (probability spread uniformly within a bin).

The point estimate is the posterior quantile at level

    q(x) = 0.5 + shift_gain * P(z > shift_z | x) - low_gain * P(z < low_z | x)   (clipped to [0.01, 0.99])

With `shift_gain` = 0 that is the median, which minimises the expected absolute error but, under
a prior that falls steeply with z, pulls every high-z galaxy towards the many low-z ones (the
seed's negative bias at high z). Minimising the MAE subject to a bound on the mean error in each
bin of true z gives exactly this form: the Lagrangian's per-galaxy optimum is the quantile at
0.5 - sum_b(lambda_b P(z in b | x)) / 2, so a constraint on the high-z bins raises the quantile in
proportion to the posterior mass there. Galaxies that are surely at low z keep their median;
`xpz.model.train.calibrate_posterior` chooses `shift_z` and `shift_gain` on the validation split.
The same argument at the low end (the prior rises steeply from z = 0, so the median of a galaxy at
z < 0.1 is pulled up: a positive low-z bias, the larger the further the galaxy's physics is from the
training set's) gives the second term: `low_gain` lowers the quantile in proportion to the mass
below `low_z` (issue 18: |mean error| <= 0.01 at z < 0.10, on galaxies of unseen physics too).
The interval: a model carrying `xpz.model.conformal.ConformalIntervals` (every model trained now)
gives the hull of its conformal set, which covers 68% in every bin of true z and S/N quartile on
validation; an older model gives the central `interval` probability around q: [q - 0.34, q + 0.34],
moved inside [0, 1] when q is near an end. Both always contain z.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xpz.spectra import N_FLUX

INTERVAL = 0.68  # central probability mass between z_lower and z_upper
PREDICTION_COLUMNS = ("z", "z_lower", "z_upper")


QUANTILE_LIMITS = (0.01, 0.99)  # the point estimate's quantile level stays inside these


def _cdf(probs: np.ndarray) -> np.ndarray:
    """(n, bins + 1) normalised cumulative distributions at the bin edges."""
    p = np.maximum(np.asarray(probs), 0.0)  # in the output's dtype: the float64 sums below are the same
    cdf = np.empty((len(p), p.shape[1] + 1))
    cdf[:, 0] = 0.0
    np.cumsum(p, axis=1, dtype=np.float64, out=cdf[:, 1:])
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    return cdf


def _row_quantiles(cdf: np.ndarray, edges: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantile q[i] of row i (q broadcast to (n,))."""
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), (len(cdf),))
    rows = np.arange(len(cdf))
    # first edge whose CDF reaches q (>= 1 since cdf[:, 0] = 0 < q)
    hi = np.clip(np.argmax(cdf >= q[:, None], axis=1), 1, len(edges) - 1)
    c0, c1 = cdf[rows, hi - 1], cdf[rows, hi]
    frac = np.where(c1 > c0, (q - c0) / np.maximum(c1 - c0, 1e-300), 0.5)
    return edges[hi - 1] + np.clip(frac, 0.0, 1.0) * (edges[hi] - edges[hi - 1])


def posterior_quantiles(probs: np.ndarray, edges: np.ndarray, quantiles) -> np.ndarray:
    """(n, len(quantiles)) quantiles of binned distributions (rows of `probs`, bins `edges`)."""
    edges = np.asarray(edges, dtype=np.float64)
    cdf = _cdf(probs)
    return np.stack([_row_quantiles(cdf, edges, q) for q in quantiles], axis=1)


def mass_above(cdf: np.ndarray, edges: np.ndarray, z: float) -> np.ndarray:
    """P(z' > z) per row of a CDF at `edges` (linear within a bin)."""
    j = int(np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(edges) - 2))
    t = float(np.clip((z - edges[j]) / (edges[j + 1] - edges[j]), 0.0, 1.0))
    return 1.0 - (cdf[:, j] + t * (cdf[:, j + 1] - cdf[:, j]))


def point_levels(
    cdf: np.ndarray,
    edges: np.ndarray,
    shift_z: float,
    shift_gain: float,
    low_z: float = 0.0,
    low_gain: float = 0.0,
) -> np.ndarray:
    """The quantile level of each row's point estimate:
    0.5 + shift_gain * P(z > shift_z) - low_gain * P(z < low_z), clipped to QUANTILE_LIMITS."""
    q = np.full(len(cdf), 0.5)
    if shift_gain:
        q = q + shift_gain * mass_above(cdf, edges, shift_z)
    if low_gain:
        q = q - low_gain * (1.0 - mass_above(cdf, edges, low_z))
    return np.clip(q, *QUANTILE_LIMITS)


def redshifts_from_output(
    output: np.ndarray,
    edges: np.ndarray | None,
    interval: float = INTERVAL,
    shift_z: float = 0.0,
    shift_gain: float = 0.0,
    low_z: float = 0.0,
    low_gain: float = 0.0,
):
    """(z, z_lower, z_upper) arrays from raw model output (edges None for a regression model)."""
    output = np.asarray(output)
    if edges is None or output.ndim == 1 or output.shape[1] == 1:
        z = output.reshape(-1).astype(np.float64)
        nan = np.full_like(z, np.nan)
        return z, nan, nan
    edges = np.asarray(edges, dtype=np.float64)
    cdf = _cdf(output)
    q = point_levels(cdf, edges, shift_z, shift_gain, low_z, low_gain)
    q_lower = np.clip(q - interval / 2.0, 0.0, 1.0 - interval)
    return (
        _row_quantiles(cdf, edges, q),
        _row_quantiles(cdf, edges, q_lower),
        _row_quantiles(cdf, edges, q_lower + interval),
    )


ELIGIBILITY_COLUMNS = ("ood_score", "eligible")


def predict_posterior(model, fluxes: np.ndarray, batch_size: int = 1024):
    """Raw (n, 186) fluxes -> (DataFrame[z, z_lower, z_upper, ood_score, eligible], edges, cdf).

    `cdf` (n, bins + 1) is each galaxy's p(z) as a CDF at the bin `edges` after the model's
    per-group coverage recalibration (`xpz.model.recalibration`), and z is read off it; the interval
    is the model's conformal set (`xpz.model.conformal`), or, for a model without one, the central
    68% of that CDF around z; edges and cdf are None for a regression model. `ood_score` /
    `eligible` come from the model's `xpz.model.ood.OodDensity` layer (its score evaluated by `xpz.model.ood.fast_score`, in a thread
    while TensorFlow runs the network); a model saved without one gives NaN and True (not assessed).
    The network runs through its cached compiled function (`xpz.model.inference.predict_array`),
    which gives `model.predict`'s output without its per-call overhead."""
    from concurrent.futures import ThreadPoolExecutor

    from xpz.model.architectures import posterior_layer
    from xpz.model.inference import predict_array
    from xpz.model.ood import fast_score, ood_layer

    x = np.asarray(fluxes, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_FLUX:
        raise ValueError(f"predict_redshift: expected (n, {N_FLUX}) fluxes, got shape {x.shape}")
    columns = (*PREDICTION_COLUMNS, *ELIGIBILITY_COLUMNS)
    layer = posterior_layer(model)
    if len(x) == 0:
        empty = pd.DataFrame({c: np.empty(0) for c in columns}).astype({"eligible": bool})
        edges = None if layer is None else np.asarray(layer.edges, dtype=np.float64)
        return empty, edges, None if edges is None else np.empty((0, len(edges)))
    ood = ood_layer(model)
    if ood is None:
        (z, lo, hi), edges, cdf = _redshifts(model, layer, predict_array(model, x, batch_size=batch_size), x)
        scores = None
    else:  # the score (numpy, one thread, GIL released) overlaps the network (TensorFlow's threads)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xpz-eligibility") as pool:
            pending = pool.submit(
                fast_score, ood, x
            )  # `ood.score(x)`, evaluated faster (tests: same to 1e-10)
            (z, lo, hi), edges, cdf = _redshifts(
                model, layer, predict_array(model, x, batch_size=batch_size), x
            )
            scores = pending.result()
    frame = pd.DataFrame({"z": z, "z_lower": lo, "z_upper": hi})
    if scores is None:
        frame["ood_score"], frame["eligible"] = np.nan, True
    else:
        frame["ood_score"], frame["eligible"] = scores, ood.eligible(scores)
    return frame, edges, cdf


def _redshifts(model, layer, output: np.ndarray, x: np.ndarray):
    """((z, z_lower, z_upper), edges, cdf) from the network's output (`predict_posterior`)."""
    from xpz.model.conformal import conformal_layer
    from xpz.model.recalibration import recalibration_layer

    if layer is None:
        return redshifts_from_output(output, None), None, None
    edges = np.asarray(layer.edges, dtype=np.float64)
    shift = layer.point_estimate()
    cdf = _cdf(output)
    recal = recalibration_layer(model)
    if recal is not None:  # groups by the median (older models: by the shifted point estimate)
        level = 0.5 if recal.group_by == "median" else point_levels(cdf, edges, **shift)
        cdf = recal.apply(cdf, _row_quantiles(cdf, edges, level), x)
    q = point_levels(cdf, edges, **shift)
    z = _row_quantiles(cdf, edges, q)
    conformal = conformal_layer(model)
    if conformal is not None:  # the conformal set's hull (xpz.model.conformal)
        lo, hi = conformal.interval(cdf, edges, q, z, x)
    else:
        q_lower = np.clip(q - INTERVAL / 2.0, 0.0, 1.0 - INTERVAL)
        lo, hi = _row_quantiles(cdf, edges, q_lower), _row_quantiles(cdf, edges, q_lower + INTERVAL)
    return (z, lo, hi), edges, cdf


def predict_redshift(model, fluxes: np.ndarray, batch_size: int = 1024) -> pd.DataFrame:
    """Raw (n, 186) fluxes -> DataFrame[z, z_lower, z_upper, ood_score, eligible] (the 68% interval;
    see `predict_posterior`)."""
    return predict_posterior(model, fluxes, batch_size)[0]
