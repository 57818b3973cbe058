"""Architectures: the seed's Table 2 CNN, the configurable CPU default, and the keras-tuner HyperModel.

Every model takes raw (n, 186) fluxes: the fitted scaling (`xpz.model.scaling`) is its first layer.
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
import keras_tuner as kt
import numpy as np

from xpz.config import HyperparametersConfig, ModelConfig
from xpz.model.scaling import Scaler
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


# ----------------------------------------------------------------------------- custom objects
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
        """The quantile shifts of the point estimate (`xpz.model.posterior.redshifts_from_output` keywords)."""
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
    """A compiled CNN: raw fluxes -> scaling -> [Conv1D + MaxPool] x n -> Dense x m -> head.

    `learning_rate` (a float or a Keras schedule) overrides the hyperparameters' value.
    `log_total` (default: `scaler.normalize`) adds log total flux as a second input to the dense part.
    """
    hp = dict(hyperparameters)
    padding = padding or cfg.padding
    log_total = scaler.normalize if log_total is None else log_total
    activation = hp.get("activation", "relu")

    inputs = keras.Input(shape=(N_FLUX,), name="fluxes")
    x = scaler.pixel_layer()(inputs)
    x = keras.layers.Reshape((N_FLUX, 1), name="as_sequence")(x)
    length = N_FLUX
    for i in range(int(hp["conv_layers"])):
        k = int(hp[f"kernel_{i}"])
        stride = int(hp.get("stem_stride", 1)) if i == 0 else 1  # the input stem (see HyperparametersConfig)
        length = length - k + 1 if padding == "valid" else length
        length = -(-length // stride)
        if length < 2:
            raise ValueError(
                f"conv layer {i}: the sequence is too short ({length}) for kernel {k} with padding "
                f"{padding!r}; use fewer conv layers or padding 'same'"
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


def posterior_layer(model: keras.Model) -> RedshiftPosterior | None:
    """The softmax head's last layer, or None for a regression model."""
    for layer in reversed(model.layers):
        if isinstance(layer, RedshiftPosterior):
            return layer
    return None


# ----------------------------------------------------------------------------- keras-tuner
class RedshiftHyperModel(kt.HyperModel):
    """The seed's search space with bounds from `ModelConfig.search`."""

    def __init__(self, cfg: ModelConfig, scaler: Scaler, name: str = "xpz", tunable: bool = True):
        super().__init__(name=name, tunable=tunable)
        self.cfg = cfg
        self.scaler = scaler

    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Register the search space on `hp` and return this trial's values. Every default is the
        CPU default architecture (`ModelConfig.default`) clipped to the bounds, so the first trial
        of `xpz.model.tune` (which runs the defaults) measures the hand-picked model beside the search."""
        s, d = self.cfg.search, flat_hyperparameters(self.cfg.default)

        def default(key: str, bounds, fallback):
            value = d.get(key, fallback)
            return type(bounds[0])(min(max(value, bounds[0]), bounds[1]))

        def choice(key: str, options: list[str]):
            return hp.Choice(key, list(options), default=d[key] if d.get(key) in options else options[0])

        values: dict[str, Any] = {}
        values["conv_layers"] = hp.Int(
            "conv_layers", *s.conv_layers, default=default("conv_layers", s.conv_layers, 1)
        )
        for i in range(values["conv_layers"]):
            values[f"filters_{i}"] = hp.Int(
                f"filters_{i}", *s.filters, step=s.filters_step,
                default=default(f"filters_{i}", s.filters, s.filters[0]),
            )  # fmt: skip
            values[f"kernel_{i}"] = hp.Int(
                f"kernel_{i}", *s.kernel_size, default=default(f"kernel_{i}", s.kernel_size, s.kernel_size[0])
            )
        values["dense_layers"] = hp.Int(
            "dense_layers", *s.dense_layers, default=default("dense_layers", s.dense_layers, 1)
        )
        for i in range(values["dense_layers"]):
            values[f"units_{i}"] = hp.Int(
                f"units_{i}", *s.units, step=s.units_step, default=default(f"units_{i}", s.units, s.units[0])
            )
        values["activation"] = choice("activation", s.activations)
        values["loss"] = choice("loss", s.losses)
        values["optimizer"] = choice("optimizer", s.optimizers)
        lo, hi = s.learning_rate
        values["learning_rate"] = (
            hp.Float(
                "learning_rate", lo, hi, sampling="log", default=default("learning_rate", s.learning_rate, lo)
            )
            if hi > lo
            else hp.Fixed("learning_rate", lo)
        )
        if d.get("stem_stride", 1) != 1:  # the default's input stem is kept by every trial
            values["stem_stride"] = hp.Fixed("stem_stride", int(d["stem_stride"]))
        return values

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return build_model(self.declare(hp), self.cfg, self.scaler)


# the pass-through layers that trained models carry (eligibility, coverage recalibration, conformal
# intervals): importing this module registers every custom object a saved xpz model needs
from xpz.model import conformal as _conformal  # noqa: E402,F401
from xpz.model import ood as _ood  # noqa: E402,F401
