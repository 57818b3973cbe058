"""Post-hoc fits on the validation split: the p(z) recalibration and the conformal intervals.

Each takes a trained Keras model and validation data ((n, 186) raw fluxes, (n,) true z) and returns
the model with one more pass-through layer (`xpz.model.passthrough`) plus a summary dict. They sit
here, above `xpz.model.posterior` (which they call to read the model's current p(z)), so that the
layers themselves (`recalibration`, `conformal`) stay below it and the package has no import cycle.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from xpz.model.conformal import ConformalIntervals, category_edges
from xpz.model.head import _row_quantiles, cdf_at, point_levels, posterior_layer
from xpz.model.passthrough import attach_layer
from xpz.model.posterior import predict_posterior
from xpz.model.recalibration import CoverageRecalibration


def fit_recalibration(
    model: keras.Model, val_fluxes, val_z, cfg: Any
) -> tuple[keras.Model, dict[str, float]]:
    """Recalibrate a softmax-head model on the validation split only (`cfg`: a `CoverageConfig`);
    returns the model carrying a `CoverageRecalibration` layer and a summary (validation coverage)."""
    if posterior_layer(model) is None:
        return model, {}
    x = np.asarray(val_fluxes, np.float32)
    z_true = np.asarray(val_z, float)
    _, edges, cdf = predict_posterior(model, x)
    pit = cdf_at(cdf, edges, z_true)
    n = int(round(cfg.z_max / cfg.z_step))
    layer = CoverageRecalibration(np.round(np.arange(1, n + 1) * cfg.z_step, 10), cfg.snr_groups,
                                  group_by="median", name="recalibration")  # fmt: skip
    summary = layer.fit(pit, _row_quantiles(cdf, edges, 0.5), x, cfg.min_count)
    wrapped = attach_layer(model, layer)
    after, _, _ = predict_posterior(wrapped, x)
    inside = (z_true >= after["z_lower"].to_numpy()) & (z_true <= after["z_upper"].to_numpy())
    summary["val_coverage_68_recalibrated"] = float(inside.mean())
    return wrapped, summary


def fit_conformal(
    model: keras.Model,
    val_fluxes,
    val_z,
    cfg: Any,
    bin_width: float = 0.05,
    z_max: float = 0.6,
    level: float = 0.68,
) -> tuple[keras.Model, dict[str, float]]:
    """Fit the thresholds of a softmax-head model on the validation split only (`cfg`: a
    `CoverageConfig`: `snr_groups` groups of `conformal_groups`, `min_count`) and return the model carrying a
    `ConformalIntervals` layer, with a summary (cells, fallbacks, validation coverage)."""
    head = posterior_layer(model)
    if head is None:
        return model, {}
    x = np.asarray(val_fluxes, np.float32)
    z_true = np.asarray(val_z, float)
    _, edges, cdf = predict_posterior(model, x)
    q = point_levels(cdf, edges, **head.point_estimate())
    z_edges = category_edges(z_true, bin_width, z_max, cfg.min_count, grid=edges)
    layer = ConformalIntervals(
        z_edges, cfg.snr_groups, level, group_by=cfg.conformal_groups, name="conformal"
    )
    summary = layer.fit(cdf, edges, q, z_true, x, cfg.min_count)
    wrapped = attach_layer(model, layer)
    after, _, _ = predict_posterior(wrapped, x)
    inside = (z_true >= after["z_lower"].to_numpy()) & (z_true <= after["z_upper"].to_numpy())
    summary["val_coverage_68_conformal"] = float(inside.mean())
    return wrapped, summary
