"""The softmax head and its CDF math: the leaf of `xpz.model` (imports keras and numpy only).

`RedshiftPosterior` is the last layer of a softmax-head model: (n, bins) logits ->
softmax((logits - alpha * log p_train(z)) / T), (n, bins) probabilities over fixed redshift bins
`edges` (bins + 1 values, in z). `SmoothedBinCrossentropy` is its training loss, `RedshiftMAE` the
metric (MAE of z, dimensionless). The functions below turn (n, bins) probabilities into CDFs at
the bin edges and read quantiles off them (probability spread uniformly within a bin); every
prediction path (`xpz.model.posterior`) and every post-hoc fit (`recalibration`, `conformal`)
uses them. Nothing here imports another xpz module, so any module may import this one.
"""

from __future__ import annotations

import keras
import numpy as np

LEGACY_INTERVAL = 0.68  # the central interval of models saved without conformal intervals (a model
# property, not a knob: `train.interval` in params.yaml sets what new models are calibrated to)
QUANTILE_LIMITS = (0.01, 0.99)  # the point estimate's quantile level stays inside these


@keras.saving.register_keras_serializable(package="xpz")
class RedshiftPosterior(keras.layers.Layer):
    """softmax((logits - alpha * log_prior) / temperature) over fixed redshift bins."""

    def __init__(self, edges, **kwargs):
        super().__init__(**kwargs)
        self.edges = [float(e) for e in edges]
        self.n_bins = len(self.edges) - 1

    def build(self, input_shape):
        self.log_prior = self.add_weight(
            name="log_prior", shape=(self.n_bins,), initializer="zeros", trainable=False
        )
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros", trainable=False)
        self.temperature = self.add_weight(name="temperature", shape=(), initializer="ones", trainable=False)
        # the point estimate's quantile shift (xpz.model.posterior): read by predict_redshift, not by call()
        self.shift_z = self.add_weight(name="shift_z", shape=(), initializer="zeros", trainable=False)
        self.shift_gain = self.add_weight(name="shift_gain", shape=(), initializer="zeros", trainable=False)
        self.low_z = self.add_weight(name="low_z", shape=(), initializer="zeros", trainable=False)
        self.low_gain = self.add_weight(name="low_gain", shape=(), initializer="zeros", trainable=False)

    def call(self, logits):
        return keras.ops.softmax((logits - self.alpha * self.log_prior) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def set_calibration(
        self,
        log_prior=None,
        alpha=None,
        temperature=None,
        shift_z=None,
        shift_gain=None,
        low_z=None,
        low_gain=None,
    ) -> None:
        if log_prior is not None:
            self.log_prior.assign(np.asarray(log_prior, dtype="float32"))
        for name, value in (("alpha", alpha), ("temperature", temperature), ("shift_z", shift_z),
                            ("shift_gain", shift_gain), ("low_z", low_z), ("low_gain", low_gain)):  # fmt: skip
            if value is not None:
                getattr(self, name).assign(float(value))

    def load_own_variables(self, store):
        """Older models hold fewer variables: 3 (before the point-estimate shift) or 5 (before the
        low-z shift); load what they have, the rest keeps its neutral initial value (no shift)."""
        n = len(store.keys())
        if n in (3, 5):
            for i, variable in enumerate(self.weights[:n]):
                variable.assign(store[str(i)])
            return
        super().load_own_variables(store)

    def point_estimate(self) -> dict[str, float]:
        """The quantile shifts of the point estimate (`redshifts_from_output` keywords)."""
        return {
            name: float(getattr(self, name).numpy())
            for name in ("shift_z", "shift_gain", "low_z", "low_gain")
        }

    def get_config(self):
        return {**super().get_config(), "edges": self.edges}


def _smoothed_targets(z, edges, sigma):
    ops = keras.ops
    z = ops.reshape(ops.cast(z, "float32"), (-1, 1))
    e = ops.convert_to_tensor(np.asarray(edges, dtype="float32"))[None, :]
    if sigma > 0:
        cdf = 0.5 * (1.0 + ops.erf((e - z) / (sigma * np.sqrt(2.0))))
    else:
        cdf = ops.cast(e > z, "float32")
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / ops.maximum(ops.sum(mass, axis=-1, keepdims=True), 1e-12)


@keras.saving.register_keras_serializable(package="xpz")
class SmoothedBinCrossentropy(keras.losses.Loss):
    """Cross-entropy of bin probabilities against a Gaussian (sigma) around the true z."""

    def __init__(self, edges, sigma=0.01, name="smoothed_bin_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.edges = [float(e) for e in edges]
        self.sigma = float(sigma)

    def call(self, y_true, y_pred):
        ops = keras.ops
        target = _smoothed_targets(y_true, self.edges, self.sigma)
        p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0)
        return -ops.sum(target * ops.log(p), axis=-1)

    def get_config(self):
        return {**super().get_config(), "edges": self.edges, "sigma": self.sigma}


def _abs_z_error(y_true, y_pred, centres=None):
    ops = keras.ops
    z = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    if centres is None:
        pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    else:
        c = ops.convert_to_tensor(np.asarray(centres, dtype="float32"))
        pred = ops.sum(ops.cast(y_pred, "float32") * c[None, :], axis=-1)  # posterior mean
    return ops.abs(pred - z)


@keras.saving.register_keras_serializable(package="xpz")
class RedshiftMAE(keras.metrics.MeanMetricWrapper):
    """MAE of z: of the output itself (regression) or of the posterior mean (softmax head)."""

    def __init__(self, centres=None, name="mae", dtype=None):
        self.centres = None if centres is None else [float(c) for c in centres]
        super().__init__(fn=_abs_z_error, name=name, dtype=dtype, centres=self.centres)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "centres": self.centres}


def posterior_layer(model: keras.Model) -> RedshiftPosterior | None:
    """The softmax head's last layer, or None for a regression model."""
    for layer in reversed(model.layers):
        if isinstance(layer, RedshiftPosterior):
            return layer
    return None


# ----------------------------------------------------------------------------- CDF math
def _cdf(probs: np.ndarray) -> np.ndarray:
    """(n, bins + 1) normalised cumulative distributions at the bin edges."""
    p = np.maximum(np.asarray(probs), 0.0)  # in the output's dtype: the float64 sums below are the same
    cdf = np.empty((len(p), p.shape[1] + 1))
    cdf[:, 0] = 0.0
    np.cumsum(p, axis=1, dtype=np.float64, out=cdf[:, 1:])
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    return cdf


def _row_quantiles(cdf: np.ndarray, edges: np.ndarray, q: np.ndarray | float) -> np.ndarray:
    """Quantile q[i] of row i (q broadcast to (n,)) of an (n, bins + 1) CDF at `edges` (bins + 1,): (n,) z."""
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
    interval: float = LEGACY_INTERVAL,
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


def cdf_at(cdf: np.ndarray, edges: np.ndarray, z: np.ndarray) -> np.ndarray:
    """F(z[i]) of row i of a CDF tabulated at `edges` (linear between edges, clipped to the ends)."""
    edges = np.asarray(edges, dtype=np.float64)
    z = np.clip(np.asarray(z, dtype=np.float64), edges[0], edges[-1])
    j = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(edges) - 2)
    rows = np.arange(len(cdf))
    t = (z - edges[j]) / (edges[j + 1] - edges[j])
    return cdf[rows, j] + t * (cdf[rows, j + 1] - cdf[rows, j])
