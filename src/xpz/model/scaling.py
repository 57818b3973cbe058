"""Input scaling fitted on the training split only, carried inside the model as Keras layers.

A saved model therefore takes raw (n, 186) fluxes. Two steps, both fitted by `fit_scaler` (a third,
`LogLambdaResampling`, fixed, moves the samples to a uniform ln-wavelength grid when the model asks):

1. optional shape normalisation: each spectrum is divided by its total flux (sum over the 186
   samples), so the CNN sees the spectral shape; log10 of the total flux becomes a second input
   (`LogTotalFlux`), min-max scaled with the training range;
2. per pixel, either
   - `asinh` (`AsinhScaling`, the default): u -> asinh(u / b), standardised with the training
     split's per-pixel mean and standard deviation. asinh is the field's logarithm for fluxes near
     zero or negative ("asinh magnitudes", Lupton, Gunn & Szalay 1999, AJ 118, 1406): logarithmic
     above the softening b, linear below it. Against min-max scaling it lowered the MAE by 9-28%
     on every galaxy family, trained on or left out (three seeds; docs/families.md). Standardising
     the linear unit-sum fluxes did as well there: the gain is leaving min-max. asinh is kept
     because a strong line or a bad sample moves its input logarithmically, not linearly;
   - `minmax` (`MinMaxScaling`, the seed's): to [0, 1] with the training split's per-pixel minimum
     and maximum. The seed fitted this on all data, leaking the test set; here it is train only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np

from xpz.config_sections import ASINH_SOFTENING, PixelScaling
from xpz.spectra import N_FLUX

if TYPE_CHECKING:
    from xpz.config import ModelConfig

# Total fluxes below this (noise-dominated or negative sums) are floored before dividing / log.
MIN_TOTAL_FLUX = 1e-3
_EPS = 1e-12


def total_flux(fluxes: np.ndarray) -> np.ndarray:
    """Sum over the 186 samples, floored at MIN_TOTAL_FLUX (shape (n, 1))."""
    return np.maximum(np.asarray(fluxes, dtype=np.float64).sum(axis=1, keepdims=True), MIN_TOTAL_FLUX)


@dataclass(frozen=True)
class Scaler:
    """Fitted scaling constants (numpy), turned into Keras layers by `layers()`."""

    offset: np.ndarray  # (186,) scaled = (f(u) - offset) / scale per pixel, u the (normalised) flux,
    scale: np.ndarray  # (186,) f = identity (minmax: training min, max - min) or asinh(u / b) (mean, std)
    normalize: bool = False
    log_total_range: tuple[float, float] = (0.0, 1.0)  # train min/max of log10 total flux
    pixel_scaling: PixelScaling = "minmax"
    softening: float = ASINH_SOFTENING  # asinh's b, in the units of the (normalised) fluxes

    def transform(self, fluxes: np.ndarray) -> np.ndarray:
        """NumPy twin of the Keras layers: (n, 186) scaled fluxes (without the log-total input)."""
        x = np.asarray(fluxes, dtype=np.float64)
        if self.normalize:
            x = x / total_flux(x)
        if self.pixel_scaling == "asinh":
            x = np.arcsinh(x / self.softening)
        return ((x - self.offset) / self.scale).astype(np.float32)

    def transform_log_total(self, fluxes: np.ndarray) -> np.ndarray:
        lo, hi = self.log_total_range
        return ((np.log10(total_flux(fluxes)) - lo) / max(hi - lo, _EPS)).astype(np.float32)

    def pixel_layer(self) -> MinMaxScaling | AsinhScaling:
        if self.pixel_scaling == "asinh":
            return AsinhScaling(
                mean=[float(v) for v in self.offset],
                std=[float(v) for v in self.scale],
                softening=self.softening,
                normalize=self.normalize,
                name="asinh_scaling",
            )
        return MinMaxScaling(
            minimum=[float(v) for v in self.offset],
            maximum=[float(v) for v in self.offset + self.scale],
            normalize=self.normalize,
            name="minmax_scaling",
        )

    def log_total_layer(self) -> LogTotalFlux:
        lo, hi = self.log_total_range
        return LogTotalFlux(log_min=float(lo), log_max=float(hi), name="log_total_flux")


def fit_scaler(
    train_fluxes: np.ndarray,
    normalize: bool = False,
    pixel_scaling: PixelScaling = "minmax",
    softening: float = ASINH_SOFTENING,
) -> Scaler:
    """Fit the per-pixel scaling (on shape-normalised fluxes when `normalize`) on the training split.

    `train_fluxes` (n, 186), e-/s per pseudo-wavelength unit. `pixel_scaling` "minmax" stores the
    per-pixel minimum and maximum; "asinh" the per-pixel mean and standard deviation of
    asinh(flux / `softening`) (module docstring). Raises ValueError on another shape or n = 0.
    """
    x = np.asarray(train_fluxes, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != N_FLUX or len(x) == 0:
        raise ValueError(f"fit_scaler: expected (n>0, {N_FLUX}) fluxes, got {x.shape}")
    if pixel_scaling not in ("asinh", "minmax"):
        raise ValueError(f"fit_scaler: pixel_scaling must be 'asinh' or 'minmax', got {pixel_scaling!r}")
    if not softening > 0:
        raise ValueError(f"fit_scaler: softening must be > 0, got {softening}")
    log_total = np.log10(total_flux(x))
    if normalize:
        x = x / total_flux(x)
    log_range = (float(log_total.min()), float(log_total.max()))
    if pixel_scaling == "asinh":
        a = np.arcsinh(x / softening)
        return Scaler(
            offset=a.mean(axis=0),
            scale=np.maximum(a.std(axis=0), 1e-6),
            normalize=normalize,
            log_total_range=log_range,
            pixel_scaling="asinh",
            softening=float(softening),
        )
    low, high = x.min(axis=0), x.max(axis=0)
    return Scaler(
        offset=low, scale=np.maximum(high - low, _EPS), normalize=normalize, log_total_range=log_range
    )


def fit_model_scaler(train_fluxes: np.ndarray, cfg: ModelConfig) -> Scaler:
    """`fit_scaler` with the model section's choices (normalize_flux, pixel_scaling, asinh_softening)."""
    return fit_scaler(train_fluxes, cfg.normalize_flux, cfg.pixel_scaling, cfg.asinh_softening)


class _PixelScaling(keras.layers.Layer):
    """Shared by the per-pixel scalings: float32 fluxes, divided by their total when `normalize`."""

    def __init__(self, normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.normalize = bool(normalize)

    def _fluxes(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if self.normalize:
            x = x / keras.ops.maximum(keras.ops.sum(x, axis=-1, keepdims=True), MIN_TOTAL_FLUX)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="xpz")
class MinMaxScaling(_PixelScaling):
    """(x [/ total flux] - min) / (max - min) per pixel; constants are part of the layer config."""

    def __init__(self, minimum, maximum, normalize=False, **kwargs):
        super().__init__(normalize, **kwargs)
        self.minimum = [float(v) for v in minimum]
        self.maximum = [float(v) for v in maximum]
        if len(self.minimum) != len(self.maximum):
            raise ValueError("MinMaxScaling: minimum and maximum lengths differ")

    def call(self, inputs):
        lo = np.asarray(self.minimum, dtype=np.float32)
        span = np.maximum(np.asarray(self.maximum) - np.asarray(self.minimum), _EPS).astype(np.float32)
        return (self._fluxes(inputs) - keras.ops.convert_to_tensor(lo)) / keras.ops.convert_to_tensor(span)

    def get_config(self):
        return {
            **super().get_config(),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "normalize": self.normalize,
        }


@keras.saving.register_keras_serializable(package="xpz")
class AsinhScaling(_PixelScaling):
    """(asinh(x [/ total flux] / softening) - mean) / std per pixel; constants in the layer config."""

    def __init__(self, mean, std, softening=ASINH_SOFTENING, normalize=True, **kwargs):
        super().__init__(normalize, **kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.softening = float(softening)
        if len(self.mean) != len(self.std):
            raise ValueError("AsinhScaling: mean and std lengths differ")

    def call(self, inputs):
        a = keras.ops.arcsinh(self._fluxes(inputs) / self.softening)
        mean = keras.ops.convert_to_tensor(np.asarray(self.mean, dtype=np.float32))
        return (a - mean) / keras.ops.convert_to_tensor(np.asarray(self.std, dtype=np.float32))

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "std": self.std,
            "softening": self.softening,
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


def loglambda_matrix(n_out: int, wavelengths: np.ndarray | None = None) -> np.ndarray:
    """(186, n_out) float32 weights: scaled samples @ W = the same on a uniform ln(wavelength) grid.

    The 186 samples are uniform in pseudo-wavelength, which is not uniform in ln(wavelength): a
    step of 0.004 at BP's blue end, 0.012 at its red end, 0.003-0.005 in RP. On a uniform ln grid a
    redshift moves every feature by ln(1 + z), so a convolution's kernel meets a break or a line at
    the same width wherever it lies. Linear interpolation in ln(wavelength) from the first sample
    (366 nm) to the last (996 nm); BP serves wavelengths below RP's first sample, RP the rest (the
    bands overlap by 3 nm). `wavelengths` (186,) nm, per column: default gaiaxpy's DR3 dispersion
    model (`xpz.spectra.wavelengths_nm`). Raises ValueError for n_out < 2, or wavelengths of another
    shape, not positive, or not increasing within each band.
    """
    if n_out < 2:
        raise ValueError(f"loglambda_matrix: n_out must be >= 2, got {n_out}")
    from xpz.spectra import N_BP, wavelengths_nm

    wl = wavelengths_nm() if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
    bands_increase = (np.diff(wl[:N_BP]) > 0).all() and (np.diff(wl[N_BP:]) > 0).all()
    if wl.shape != (N_FLUX,) or not (wl > 0).all() or not bands_increase:
        raise ValueError(
            f"loglambda_matrix: wavelengths must be {N_FLUX} positive values (nm), increasing within BP "
            f"(the first {N_BP}) and within RP"
        )
    rp_start = wl[N_BP]
    keep = np.r_[np.flatnonzero(wl[:N_BP] < rp_start), N_BP + np.arange(N_FLUX - N_BP)]
    src = np.log(wl[keep])
    grid = np.linspace(src[0], src[-1], n_out)
    j = np.clip(np.searchsorted(src, grid, side="right") - 1, 0, len(src) - 2)
    t = np.clip((grid - src[j]) / (src[j + 1] - src[j]), 0.0, 1.0)
    w = np.zeros((N_FLUX, n_out))
    w[keep[j], np.arange(n_out)] += 1.0 - t
    w[keep[j + 1], np.arange(n_out)] += t
    return w.astype(np.float32)


@keras.saving.register_keras_serializable(package="xpz")
class LogLambdaResampling(keras.layers.Layer):
    """(n, 186) scaled samples -> (n, n_out) on a uniform ln-wavelength grid (`loglambda_matrix`).

    No weights. The 186 wavelengths are part of the layer's config, so a saved model keeps the grid
    it was trained on whatever gaiaxpy version loads it (and loading needs no gaiaxpy).
    """

    def __init__(self, n_out=256, wavelengths=None, **kwargs):
        super().__init__(**kwargs)
        self.n_out = int(n_out)
        if wavelengths is None:
            from xpz.spectra import wavelengths_nm

            wavelengths = wavelengths_nm()
        self.wavelengths = [float(v) for v in wavelengths]
        self._w = loglambda_matrix(self.n_out, np.asarray(self.wavelengths))

    def call(self, inputs):
        return keras.ops.matmul(keras.ops.cast(inputs, "float32"), keras.ops.convert_to_tensor(self._w))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_out)

    def get_config(self):
        return {**super().get_config(), "n_out": self.n_out, "wavelengths": self.wavelengths}
