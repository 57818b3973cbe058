"""The single place that turns model outputs into redshifts and 68% intervals.

A regression model's output is z itself (no interval: NaN). A softmax-head model outputs the
calibrated p(z | x) over fixed bins (see `xpz.model.head.RedshiftPosterior`); z and the interval are
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
gives the hull of its conformal set, which covers 68% in every bin of true z and quartile of p(z)'s width on
validation; an older model gives the central `interval` probability around q: [q - 0.34, q + 0.34],
moved inside [0, 1] when q is near an end. Both always contain z.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from xpz.model.conformal import conformal_layer
from xpz.model.head import (  # noqa: F401  (re-exported: the CDF math lived here before xpz.model.head)
    LEGACY_INTERVAL,
    QUANTILE_LIMITS,
    _cdf,
    _row_quantiles,
    mass_above,
    point_levels,
    posterior_layer,
    posterior_quantiles,
    redshifts_from_output,
)
from xpz.model.inference import predict_array
from xpz.model.ood import ood_layer
from xpz.model.ood_fast import fast_score
from xpz.model.recalibration import recalibration_layer
from xpz.spectra import N_FLUX

PREDICTION_COLUMNS = ("z", "z_lower", "z_upper")


ELIGIBILITY_COLUMNS = ("ood_score", "eligible")


def predict_posterior(model, fluxes: np.ndarray, batch_size: int = 1024):
    """Raw (n, 186) fluxes -> (DataFrame[z, z_lower, z_upper, ood_score, eligible], edges, cdf).

    `cdf` (n, bins + 1) is each galaxy's p(z) as a CDF at the bin `edges` after the model's
    per-group coverage recalibration (`xpz.model.recalibration`), and z is read off it; the interval
    is the model's conformal set (`xpz.model.conformal`), or, for a model without one, the central
    68% of that CDF around z; edges and cdf are None for a regression model. `ood_score` /
    `eligible` come from the model's `xpz.model.ood.OodDensity` layer (its score evaluated by `xpz.model.ood_fast.fast_score`, in a thread
    while TensorFlow runs the network); a model saved without one gives NaN and True (not assessed).
    The network runs through its cached compiled function (`xpz.model.inference.predict_array`),
    which gives `model.predict`'s output without its per-call overhead."""
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
        assert ood is not None  # scores come from it
        frame["ood_score"], frame["eligible"] = scores, ood.eligible(scores)
    return frame, edges, cdf


def _redshifts(model, layer, output: np.ndarray, x: np.ndarray):
    """((z, z_lower, z_upper), edges, cdf) from the network's output (`predict_posterior`)."""
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
        q_lower = np.clip(q - LEGACY_INTERVAL / 2.0, 0.0, 1.0 - LEGACY_INTERVAL)
        lo, hi = _row_quantiles(cdf, edges, q_lower), _row_quantiles(cdf, edges, q_lower + LEGACY_INTERVAL)
    return (z, lo, hi), edges, cdf


def predict_redshift(model, fluxes: np.ndarray, batch_size: int = 1024) -> pd.DataFrame:
    """Raw (n, 186) fluxes -> DataFrame[z, z_lower, z_upper, ood_score, eligible] (the 68% interval;
    see `predict_posterior`)."""
    return predict_posterior(model, fluxes, batch_size)[0]
