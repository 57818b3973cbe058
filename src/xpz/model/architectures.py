"""Architectures: the seed's Table 2 CNN, the configurable CPU default, and the keras-tuner HyperModel.

Every model takes raw (n, 186) fluxes: the fitted scaling (`xpz.model.scaling`) is its first layer.
With `model.input_grid: loglambda` a fixed interpolation (`LogLambdaResampling`) then puts the scaled
samples on a uniform ln-wavelength grid, on which a redshift moves every feature by the same ln(1 + z).
Hyperparameters are a flat dict (the form keras-tuner produces):

    conv_layers, filters_0.., kernel_0.., dense_layers, units_0.., activation, loss, optimizer,
    learning_rate

`loss` picks the head. "huber"/"mse"/"mae": one linear unit regressing z (the seed). "crossentropy":
a softmax over redshift bins of width `ModelConfig.bin_width` on [0, z_max], trained with
Gaussian-smoothed labels (`SmoothedBinCrossentropy`). Its last layer, `RedshiftPosterior`, holds
the training redshift prior and two calibration constants fitted on validation after training:

    p(z | x) = softmax((logits - alpha * log p_train(z)) / T)

alpha in [0, 1] divides out part of the training prior (the pull towards the many low-z objects
that biases high-z predictions low); T rescales the width so the 68% interval covers 68%. The layer
also carries the point estimate's quantile shift (`shift_z`, `shift_gain`), with which
`xpz.model.posterior` turns the model's output into z and the interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from xpz.config import ConfigError, HyperparametersConfig, ModelConfig
from xpz.model.head import (  # noqa: F401  (re-exported: the head's home before xpz.model.head)
    RedshiftMAE,
    RedshiftPosterior,
    SmoothedBinCrossentropy,
    posterior_layer,
)
from xpz.model.scaling import LogLambdaResampling, Scaler
from xpz.spectra import N_FLUX

SEED_HYPERPARAMETERS: dict[str, Any] = {
    "conv_layers": 4,
    "filters_0": 256, "kernel_0": 5,
    "filters_1": 256, "kernel_1": 5,
    "filters_2": 128, "kernel_2": 3,
    "filters_3": 64, "kernel_3": 2,
    "dense_layers": 4,
    "units_0": 256, "units_1": 256, "units_2": 128, "units_3": 64,
    "activation": "relu",
    "loss": "huber",
    "optimizer": "adamax",
    "learning_rate": 1e-3,
}  # fmt: skip
SEED_TRAINABLE_PARAMS = 699_073
DISTRIBUTION_LOSS = "crossentropy"


# ----------------------------------------------------------------------------- hyperparameters
def flat_hyperparameters(hp: HyperparametersConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The flat hyperparameter dict of a fixed architecture (or a copy of a flat dict, pruned)."""
    if isinstance(hp, HyperparametersConfig):
        out: dict[str, Any] = {"conv_layers": len(hp.conv_filters)}
        for i, (f, k) in enumerate(zip(hp.conv_filters, hp.conv_kernels)):
            out[f"filters_{i}"], out[f"kernel_{i}"] = int(f), int(k)
        out["dense_layers"] = len(hp.dense_units)
        for i, u in enumerate(hp.dense_units):
            out[f"units_{i}"] = int(u)
        out.update(activation=hp.activation, loss=hp.loss, optimizer=hp.optimizer)
        out["learning_rate"] = float(hp.learning_rate)
        if hp.stem_stride != 1:  # absent when 1, so older flat dicts and searches read the same
            out["stem_stride"] = int(hp.stem_stride)
        return out
    return prune_hyperparameters(hp)


def prune_hyperparameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop per-layer keys beyond conv_layers / dense_layers (keras-tuner keeps inactive ones)."""
    n_conv, n_dense = int(values["conv_layers"]), int(values["dense_layers"])
    out = {}
    for key, value in values.items():
        prefix, _, idx = key.rpartition("_")
        if prefix in ("filters", "kernel") and idx.isdigit() and int(idx) >= n_conv:
            continue
        if prefix == "units" and idx.isdigit() and int(idx) >= n_dense:
            continue
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def is_distribution(hyperparameters: Mapping[str, Any]) -> bool:
    return hyperparameters.get("loss") == DISTRIBUTION_LOSS


def z_bin_edges(cfg: ModelConfig) -> np.ndarray:
    """Edges of the softmax head's redshift bins."""
    n = int(round(cfg.z_max / cfg.bin_width))
    return np.linspace(0.0, cfg.z_max, n + 1)


# ----------------------------------------------------------------------------- builders
def _optimizer(name: str, learning_rate):
    classes = {
        "adam": keras.optimizers.Adam,
        "adamax": keras.optimizers.Adamax,
        "nadam": keras.optimizers.Nadam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }
    if name not in classes:
        raise ValueError(f"optimizer: unknown {name!r} (known: {sorted(classes)})")
    return classes[name](learning_rate=learning_rate)


def _loss(name: str, cfg: ModelConfig):
    if name == DISTRIBUTION_LOSS:
        return SmoothedBinCrossentropy(z_bin_edges(cfg), cfg.label_sigma)
    losses = {"huber": keras.losses.Huber, "mse": keras.losses.MeanSquaredError,
              "mae": keras.losses.MeanAbsoluteError}  # fmt: skip
    if name not in losses:
        raise ValueError(f"loss: unknown {name!r} (known: {[DISTRIBUTION_LOSS, *losses]})")
    return losses[name]()


def build_model(
    hyperparameters: Mapping[str, Any],
    cfg: ModelConfig,
    scaler: Scaler,
    learning_rate=None,
    *,
    padding: str | None = None,
    log_total: bool | None = None,
    name: str = "xpz_cnn",
) -> keras.Model:
    """A compiled CNN: raw fluxes -> scaling [-> ln-wavelength grid] -> [Conv1D + MaxPool] x n -> Dense x m
    -> head.

    `learning_rate` (a float or a Keras schedule) overrides the hyperparameters' value.
    `log_total` (default: `scaler.normalize`) adds log total flux as a second input to the dense part.
    """
    hp = dict(hyperparameters)
    padding = padding or cfg.padding
    log_total = scaler.normalize if log_total is None else log_total
    activation = hp.get("activation", "relu")

    inputs = keras.Input(shape=(N_FLUX,), name="fluxes")
    x = scaler.pixel_layer()(inputs)
    length = N_FLUX
    if cfg.input_grid == "loglambda":
        x = LogLambdaResampling(cfg.loglambda_pixels, name="loglambda")(x)
        length = cfg.loglambda_pixels
    x = keras.layers.Reshape((length, 1), name="as_sequence")(x)
    for i in range(int(hp["conv_layers"])):
        k = int(hp[f"kernel_{i}"])
        stride = int(hp.get("stem_stride", 1)) if i == 0 else 1  # the input stem (see HyperparametersConfig)
        length = length - k + 1 if padding == "valid" else length
        length = -(-length // stride)
        if length < 2:
            grid = " or a larger model.loglambda_pixels" if cfg.input_grid == "loglambda" else ""
            raise ConfigError(
                f"conv layer {i}: the sequence is too short ({length}) for kernel {k} with padding "
                f"{padding!r}; use fewer conv layers or padding 'same'{grid}"
            )
        x = keras.layers.Conv1D(
            int(hp[f"filters_{i}"]),
            k,
            strides=stride,
            padding=padding,
            activation=activation,
            name=f"conv_{i}",
        )(x)
        x = keras.layers.MaxPooling1D(2, name=f"pool_{i}")(x)
        length //= 2
    x = keras.layers.Flatten(name="flatten")(x)
    if log_total:
        x = keras.layers.Concatenate(name="with_log_total")([x, scaler.log_total_layer()(inputs)])
    for i in range(int(hp["dense_layers"])):
        x = keras.layers.Dense(int(hp[f"units_{i}"]), activation=activation, name=f"dense_{i}")(x)

    distribution = is_distribution(hp)
    if distribution:
        edges = z_bin_edges(cfg)
        logits = keras.layers.Dense(len(edges) - 1, name="logits")(x)
        outputs = RedshiftPosterior(edges, name="posterior")(logits)
        metric = RedshiftMAE(centres=0.5 * (edges[1:] + edges[:-1]))
    else:
        outputs = keras.layers.Dense(1, name="z")(x)
        metric = RedshiftMAE()
    model = keras.Model(inputs, outputs, name=name)
    lr = float(hp.get("learning_rate", 1e-3)) if learning_rate is None else learning_rate
    model.compile(
        optimizer=_optimizer(hp.get("optimizer", "adam"), lr),
        loss=_loss(hp.get("loss", "huber"), cfg),
        metrics=[metric],
    )
    return model


def build_seed_model(scaler: Scaler, cfg: ModelConfig | None = None, learning_rate=None) -> keras.Model:
    """Table 2 of the seed: 699,073 trainable parameters ('valid' convs on 186 samples, Huber, Adamax)."""
    return build_model(
        SEED_HYPERPARAMETERS, cfg or ModelConfig(), scaler, learning_rate,
        padding="valid", log_total=False, name="xpz_seed_cnn",
    )  # fmt: skip


def trainable_params(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
