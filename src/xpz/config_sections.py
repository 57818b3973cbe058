"""The model-side sections of params.yaml (`model`, its `default` architecture and `search` space,
`tune`), split from `xpz.config` to keep modules small; `xpz.config` re-exports them. Defaults equal
params.yaml's (tests/test_config.py checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ACTIVATIONS = ("relu", "elu", "selu", "gelu", "swish", "tanh", "sigmoid", "leaky_relu")
_LOSSES = ("crossentropy", "huber", "mse", "mae")
_OPTIMIZERS = ("adam", "adamax", "nadam", "rmsprop", "sgd")
# The network's per-pixel input scaling (xpz.model.scaling) and asinh's softening b, in unit-sum flux:
# 0.093 of the mean sample (1/186), about the noise of one sample of a G ~ 19 galaxy relative to its
# total (chosen on the dev protocol, docs/families.md)
PixelScaling = Literal["asinh", "minmax"]
ASINH_SOFTENING = 5e-4


def _check_bounds(name: str, bounds: tuple[float, float], low: float = 0.0) -> None:
    lo, hi = bounds
    if lo > hi:
        raise ValueError(f"{name}: min ({lo}) must not exceed max ({hi})")
    if lo <= low:
        raise ValueError(f"{name}: bounds must be > {low:g}, got [{lo}, {hi}]")


def _check_choices(name: str, values: tuple[str, ...] | list[str], allowed: tuple[str, ...]) -> None:
    if not values:
        raise ValueError(f"{name}: needs at least one choice")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown choice(s) {bad}; allowed: {list(allowed)}")


class HyperparametersConfig(_Section):
    """One fixed architecture (the CPU default); `xpz.model.architectures.flat_hyperparameters` flattens it."""

    conv_filters: list[int] = [32, 64, 64, 128]
    conv_kernels: list[int] = [5, 5, 3, 3]
    dense_units: list[int] = [256, 128, 64]
    activation: str = "relu"
    loss: str = "crossentropy"  # crossentropy = softmax over z bins; huber/mse/mae = regression
    optimizer: str = "adam"
    learning_rate: float = Field(3e-3, gt=0)
    # stride of the first convolution: XP spectra carry ~110 degrees of freedom in 186 samples, so a
    # stride-2 stem (kernel >= 3 still sees every sample) halves every later layer's work (issue 14)
    stem_stride: int = Field(1, ge=1, le=4)

    @model_validator(mode="after")
    def _valid(self) -> HyperparametersConfig:
        if len(self.conv_filters) != len(self.conv_kernels):
            raise ValueError(
                f"conv_filters ({len(self.conv_filters)}) and conv_kernels ({len(self.conv_kernels)}) "
                "must have the same length"
            )
        if any(v < 1 for v in [*self.conv_filters, *self.conv_kernels, *self.dense_units]):
            raise ValueError("conv_filters, conv_kernels and dense_units must be positive")
        _check_choices("activation", [self.activation], _ACTIVATIONS)
        _check_choices("loss", [self.loss], _LOSSES)
        _check_choices("optimizer", [self.optimizer], _OPTIMIZERS)
        return self


class SearchConfig(_Section):
    """keras-tuner search space (the seed's): [min, max] bounds and choice lists."""

    conv_layers: tuple[int, int] = (3, 4)
    filters: tuple[int, int] = (32, 128)
    filters_step: int = Field(32, ge=1)
    kernel_size: tuple[int, int] = (3, 5)
    dense_layers: tuple[int, int] = (2, 4)
    units: tuple[int, int] = (64, 256)
    units_step: int = Field(64, ge=1)
    activations: list[str] = ["relu"]
    losses: list[str] = ["crossentropy"]
    optimizers: list[str] = ["adam", "adamax"]
    learning_rate: tuple[float, float] = (1e-3, 4e-3)

    @model_validator(mode="after")
    def _bounds(self) -> SearchConfig:
        for key in ("conv_layers", "filters", "kernel_size", "dense_layers", "units", "learning_rate"):
            _check_bounds(key, getattr(self, key))
        _check_choices("activations", self.activations, _ACTIVATIONS)
        _check_choices("losses", self.losses, _LOSSES)
        _check_choices("optimizers", self.optimizers, _OPTIMIZERS)
        return self


class ModelConfig(_Section):
    """Architecture choice, input normalisation, the redshift head and the search space."""

    architecture: Literal["default", "seed"] = "default"  # used when no tuned hyperparameters given
    normalize_flux: bool = True  # divide each spectrum by its total flux; log total flux as 2nd input
    pixel_scaling: PixelScaling = "asinh"  # per-pixel input scaling (xpz.model.scaling)
    asinh_softening: float = Field(
        ASINH_SOFTENING, gt=0
    )  # asinh's b, in unit-sum flux (needs normalize_flux)
    input_grid: Literal["pixels", "loglambda"] = "pixels"  # the convolutions' axis (xpz.model.scaling)
    loglambda_pixels: int = Field(256, ge=16)  # samples of the uniform ln-wavelength grid (366-996 nm)
    padding: Literal["valid", "same"] = "same"  # conv padding (the seed's Table 2 needs "valid")
    z_max: float = Field(0.6, gt=0)  # softmax head: bins of bin_width over [0, z_max]
    bin_width: float = Field(0.005, gt=0)
    label_sigma: float = Field(0.005, ge=0)  # Gaussian smoothing of the one-hot labels
    default: HyperparametersConfig = HyperparametersConfig()
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _bins(self) -> ModelConfig:
        n = self.z_max / self.bin_width
        if n < 2 or abs(n - round(n)) > 1e-6:
            raise ValueError(f"bin_width ({self.bin_width}) must divide z_max ({self.z_max}) into >= 2 bins")
        if self.pixel_scaling == "asinh" and not self.normalize_flux:
            raise ValueError(
                "pixel_scaling 'asinh' needs normalize_flux: true (its softening is in unit-sum flux); "
                "use pixel_scaling: minmax without it"
            )
        return self


class TuneConfig(_Section):
    """keras-tuner BayesianOptimization; the same directory resumes the search."""

    enabled: bool = True
    directory: Path = Path("tuning")
    project_name: str = "xpz"
    max_trials: int = Field(3, ge=1)
    epochs: int = Field(2, ge=1)  # per trial
    objective: str = "val_mae"
    direction: Literal["min", "max"] = "min"
    max_train_samples: int | None = Field(15000, ge=100)  # subsample of train per trial (None: all)
    max_val_samples: int | None = Field(5000, ge=100)  # subsample of validation per trial
    num_initial_points: int | None = Field(None, ge=1)
    min_improvement: float = Field(0.03, ge=0)  # relative mean gain a trial needs to replace the default
    confirm_seeds: int = Field(
        2, ge=0, le=8
    )  # paired default-vs-best runs (seeds seed, seed+1, ...); 0: proxy rule
    confirm_epochs: int | None = Field(None, ge=1)  # epochs of each confirmation run (None: `epochs`)
    seed: int = 42

    @model_validator(mode="after")
    def _names(self) -> TuneConfig:
        if not self.objective.startswith("val_"):
            raise ValueError(f"objective must be a validation metric (val_...), got {self.objective!r}")
        return self
