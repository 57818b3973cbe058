"""Input scaling fitted on the training split only, carried inside the model as Keras layers.

A saved model therefore takes raw (n, 186) fluxes. Two steps, both fitted by `fit_scaler`:

1. optional shape normalisation: each spectrum is divided by its total flux (sum over the 186
   samples), so the CNN sees the spectral shape; log10 of the total flux becomes a second input
   (`LogTotalFlux`), min-max scaled with the training range;
2. per-pixel min-max scaling to [0, 1] with the training split's per-pixel minimum and maximum
   (`MinMaxScaling`). The seed fitted this on all data, leaking the test set; here it is train only.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from xpz.spectra import N_FLUX

# Total fluxes below this (noise-dominated or negative sums) are floored before dividing / log.
MIN_TOTAL_FLUX = 1e-3
_EPS = 1e-12


def total_flux(fluxes: np.ndarray) -> np.ndarray:
    """Sum over the 186 samples, floored at MIN_TOTAL_FLUX (shape (n, 1))."""
    return np.maximum(np.asarray(fluxes, dtype=np.float64).sum(axis=1, keepdims=True), MIN_TOTAL_FLUX)


@dataclass(frozen=True)
class Scaler:
    """Fitted scaling constants (numpy), turned into Keras layers by `layers()`."""

    minimum: np.ndarray  # (186,) per-pixel minimum of the (normalised) training fluxes
    maximum: np.ndarray  # (186,)
    normalize: bool = False
    log_total_range: tuple[float, float] = (0.0, 1.0)  # train min/max of log10 total flux

    def transform(self, fluxes: np.ndarray) -> np.ndarray:
        """NumPy twin of the Keras layers: (n, 186) scaled fluxes (without the log-total input)."""
        x = np.asarray(fluxes, dtype=np.float64)
        if self.normalize:
            x = x / total_flux(x)
        span = np.maximum(self.maximum - self.minimum, _EPS)
        return ((x - self.minimum) / span).astype(np.float32)

    def transform_log_total(self, fluxes: np.ndarray) -> np.ndarray:
        lo, hi = self.log_total_range
        return ((np.log10(total_flux(fluxes)) - lo) / max(hi - lo, _EPS)).astype(np.float32)

    def pixel_layer(self) -> MinMaxScaling:
        return MinMaxScaling(
            minimum=[float(v) for v in self.minimum],
            maximum=[float(v) for v in self.maximum],
            normalize=self.normalize,
            name="minmax_scaling",
        )

    def log_total_layer(self) -> LogTotalFlux:
        lo, hi = self.log_total_range
        return LogTotalFlux(log_min=float(lo), log_max=float(hi), name="log_total_flux")


def fit_scaler(train_fluxes: np.ndarray, normalize: bool = False) -> Scaler:
    """Fit per-pixel min-max (on shape-normalised fluxes when `normalize`) on the training split."""
    x = np.asarray(train_fluxes, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != N_FLUX or len(x) == 0:
        raise ValueError(f"fit_scaler: expected (n>0, {N_FLUX}) fluxes, got {x.shape}")
    log_total = np.log10(total_flux(x))
    if normalize:
        x = x / total_flux(x)
    return Scaler(
        minimum=x.min(axis=0),
        maximum=x.max(axis=0),
        normalize=normalize,
        log_total_range=(float(log_total.min()), float(log_total.max())),
    )


@keras.saving.register_keras_serializable(package="xpz")
class MinMaxScaling(keras.layers.Layer):
    """(x [/ total flux] - min) / (max - min) per pixel; constants are part of the layer config."""

    def __init__(self, minimum, maximum, normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.minimum = [float(v) for v in minimum]
        self.maximum = [float(v) for v in maximum]
        self.normalize = bool(normalize)
        if len(self.minimum) != len(self.maximum):
            raise ValueError("MinMaxScaling: minimum and maximum lengths differ")

    def call(self, inputs):
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        if self.normalize:
            x = x / ops.maximum(ops.sum(x, axis=-1, keepdims=True), MIN_TOTAL_FLUX)
        lo = ops.convert_to_tensor(np.asarray(self.minimum, dtype=np.float32))
        span = np.maximum(np.asarray(self.maximum) - np.asarray(self.minimum), _EPS).astype(np.float32)
        return (x - lo) / ops.convert_to_tensor(span)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "normalize": self.normalize,
        }


@keras.saving.register_keras_serializable(package="xpz")
class LogTotalFlux(keras.layers.Layer):
    """log10(total flux), min-max scaled with the training range: shape (n, 1)."""

    def __init__(self, log_min=0.0, log_max=1.0, **kwargs):
        super().__init__(**kwargs)
        self.log_min = float(log_min)
        self.log_max = float(log_max)

    def call(self, inputs):
        ops = keras.ops
        total = ops.maximum(ops.sum(ops.cast(inputs, "float32"), axis=-1, keepdims=True), MIN_TOTAL_FLUX)
        log_total = ops.log(total) / np.log(10.0).astype(np.float32)
        return (log_total - self.log_min) / max(self.log_max - self.log_min, _EPS)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "log_min": self.log_min, "log_max": self.log_max}
