"""Training: tf.data pipeline, seeds, early stopping, throughput, ensembles; budgets in work.

The budget is work, never the clock: `train.epochs` x ceil(n_train / batch_size) steps per member,
with the cosine schedule over exactly those steps, so the same data, params and seeds give the same
model on any host. `train.max_seconds` is an opt-in safety (null in the default profile): if it
ever stops training, `TrainResult.stopped_by_time_limit` is True, a warning is printed and the
pipeline tags the MLflow run `xpz.stopped_by_time_limit=true`.

`train_model` fits the scaling on the training split, builds the model (given hyperparameters, or
`cfg.model.architecture`: the CPU default or the seed's Table 2), trains `train.members` networks
with early stopping on validation (best weights restored) and averages them into one model
(`ensemble_model`), and, for a softmax head, calibrates it on the validation split
(`xpz.model.calibration`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from xpz.model.architectures import (
    SEED_HYPERPARAMETERS,
    RedshiftMAE,
    RedshiftPosterior,
    build_model,
    build_seed_model,
    flat_hyperparameters,
    posterior_layer,
    z_bin_edges,
)
from xpz.model.calibration import calibrate_posterior
from xpz.model.scaling import Scaler, fit_model_scaler
from xpz.spectra import FAMILY_COLUMN, TARGET_COLUMN, flux_matrix

if TYPE_CHECKING:
    from xpz.config import Config, ModelConfig, TrainConfig


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    hyperparameters: dict[str, Any]
    epochs: int  # epochs actually run
    seconds: float  # wall time of fit (training + validation passes)
    samples_per_s: float  # training throughput (training batches only)
    calibration: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    members: int = 1  # networks averaged into `model`
    stopped_by_time_limit: bool = False  # the opt-in `train.max_seconds` cut training short


# ----------------------------------------------------------------------------- data
def make_dataset(x, z, weights=None, batch_size: int = 256, shuffle: bool = False, seed: int = 0):
    """A batched, prefetched tf.data.Dataset of (fluxes, z[, weight])."""
    import tensorflow as tf

    tensors: tuple[np.ndarray, ...] = (np.asarray(x, np.float32), np.asarray(z, np.float32))
    if weights is not None:
        tensors = (*tensors, np.asarray(weights, np.float32))
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(tensors[0]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def balance_weights(z, edges, balance: float, max_weight: float = 10.0) -> np.ndarray | None:
    """Per-object weights ~ n(z)^-balance (histogram on `edges`), clipped, mean 1; None if balance 0."""
    if balance <= 0:
        return None
    z = np.asarray(z, float)
    counts, _ = np.histogram(np.clip(z, edges[0], edges[-1]), bins=edges)
    density = counts[np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(counts) - 1)]
    w = (density / density.mean()) ** (-balance)
    w = np.clip(w / np.median(w), 1.0 / max_weight, max_weight)
    return (w / w.mean()).astype(np.float32)


def training_log_prior(z, edges, sigma: float, weights=None) -> np.ndarray:
    """log of the (weighted) training z histogram on `edges`, smoothed by the label Gaussian."""
    z = np.asarray(z, float)
    counts, _ = np.histogram(np.clip(z, edges[0], edges[-1]), bins=edges, weights=weights)
    counts = counts.astype(float)
    width = float(edges[1] - edges[0])
    if sigma > 0:
        half = int(math.ceil(4 * sigma / width))
        k = np.exp(-0.5 * (np.arange(-half, half + 1) * width / sigma) ** 2)
        counts = np.convolve(counts, k / k.sum(), mode="same")
    p = counts / counts.sum()
    return np.log(np.maximum(p, 1e-6 / len(p)))


# ----------------------------------------------------------------------------- callbacks
class Throughput(keras.callbacks.Callback):
    """Wall time of the training batches of each epoch (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.train_seconds: list[float] = []
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._t0 is not None:
            self.train_seconds.append(time.perf_counter() - self._t0)
            self._t0 = None

    def on_epoch_end(self, epoch, logs=None):
        if self._t0 is not None:  # no validation this epoch
            self.train_seconds.append(time.perf_counter() - self._t0)
            self._t0 = None


class TimeLimit(keras.callbacks.Callback):
    """Opt-in safety: stop before an epoch that would end past `seconds` of fit time (predicted from
    the last one). Makes the result depend on the host's speed, so `stopped` is reported upwards."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.stopped = False

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._last = self._start

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        last_epoch = epoch + 1 >= (self.params or {}).get("epochs", math.inf)
        if not last_epoch and now - self._start + (now - self._last) > self.seconds:
            self.model.stop_training = True
            self.stopped = True
        self._last = now


class CosineProgress(keras.callbacks.Callback):
    """Cosine learning-rate decay over the step budget: lr = base * (floor + (1 - floor) *
    (1 + cos(pi * step / total_steps)) / 2). Depends on steps only, never on the clock."""

    def __init__(self, base_lr: float, total_steps: int, floor: float = 0.02):
        super().__init__()
        self.base_lr, self.total_steps, self.floor = base_lr, total_steps, floor
        self.step = 0

    def progress(self) -> float:
        return min(self.step / max(self.total_steps, 1), 1.0)

    def on_train_batch_begin(self, batch, logs=None):
        factor = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * self.progress()))
        self.model.optimizer.learning_rate.assign(self.base_lr * factor)
        self.step += 1


# ----------------------------------------------------------------------------- training
def resolve_hyperparameters(cfg: ModelConfig, hyperparameters: Mapping[str, Any] | None) -> dict[str, Any]:
    if hyperparameters is not None:
        return flat_hyperparameters(hyperparameters)
    if cfg.architecture == "seed":
        return dict(SEED_HYPERPARAMETERS)
    return flat_hyperparameters(cfg.default)


@dataclass
class MemberFit:
    """One trained network (an ensemble member, or the whole model when `train.members` is 1)."""

    model: keras.Model
    history: dict[str, list[float]]
    seconds: float
    samples_per_s: float
    best_epoch: int | None
    stopped_by_time_limit: bool = False


def fit_member(
    build: Callable[[], keras.Model],
    train_ds,
    val_ds,
    n_train: int,
    tcfg: TrainConfig,
    lr: float,
    seed: int,
    max_seconds: float | None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> MemberFit:
    """Fit one network for `tcfg.epochs` epochs: early stopping on `tcfg.monitor` (best weights
    restored), the learning-rate schedule of `tcfg` over the step budget; `max_seconds` (opt-in)
    may stop it earlier, which `MemberFit.stopped_by_time_limit` reports."""
    keras.utils.set_random_seed(seed)
    model = build()
    steps = math.ceil(n_train / tcfg.batch_size)
    throughput = Throughput()
    stopper = keras.callbacks.EarlyStopping(
        monitor=tcfg.monitor, mode="min", patience=tcfg.patience, restore_best_weights=True
    )  # every monitored quantity (loss, mae) is an error
    cbs: list[keras.callbacks.Callback] = [throughput, stopper]
    if tcfg.lr_schedule == "cosine":
        cbs.append(CosineProgress(lr, tcfg.epochs * steps))
    limit = TimeLimit(max_seconds) if max_seconds else None
    if limit is not None:
        cbs.append(limit)
    cbs.extend(callbacks)
    t0 = time.perf_counter()
    fit = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=tcfg.epochs,
        callbacks=cbs,
        verbose=tcfg.verbose,
        shuffle=False,
    )  # train_ds shuffles itself
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    # steady-state throughput: skip the first epoch (graph tracing) when there are more
    times = throughput.train_seconds[1:] if len(throughput.train_seconds) > 1 else throughput.train_seconds
    samples_per_s = n_train * len(times) / sum(times) if times and sum(times) > 0 else float("nan")
    best_epoch = getattr(stopper, "best_epoch", None)
    stopped = bool(limit is not None and limit.stopped)
    if stopped:
        warnings.warn(
            f"train.max_seconds={max_seconds:.0f} s per member stopped training after {len(history.get('loss', []))} "
            f"of {tcfg.epochs} epochs: this model depends on the host's speed",
            RuntimeWarning,
            stacklevel=2,
        )
    best = None if best_epoch is None else int(best_epoch) + 1
    return MemberFit(model, history, seconds, float(samples_per_s), best, stopped)


def ensemble_model(members: Sequence[keras.Model], name: str = "xpz_ensemble") -> keras.Model:
    """One Keras model from several trained networks: their logits (softmax head) or outputs
    (regression) averaged, then one `RedshiftPosterior`. Raw fluxes in, as for a single network,
    so prediction, serving and calibration treat an ensemble like any model."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=members[0].inputs[0].shape[1:], name="fluxes")
    heads = [posterior_layer(m) for m in members]
    outs = [
        keras.Model(m.inputs, m.outputs[0] if head is None else head.input, name=f"member_{k}")(inputs)
        for k, (m, head) in enumerate(zip(members, heads))
    ]
    x = keras.layers.Average(name="member_average")(outs)
    if heads[0] is not None:
        x = RedshiftPosterior(heads[0].edges, name="posterior")(x)
    model = keras.Model(inputs, x, name=name)
    centres = (
        None if heads[0] is None else [0.5 * (a + b) for a, b in zip(heads[0].edges[:-1], heads[0].edges[1:])]
    )
    model.compile(loss=members[0].loss, metrics=[RedshiftMAE(centres=centres)])
    return model


def _fit_reliability(
    model, x_train, x_val, z_val, cfg: Config, val_groups: np.ndarray | None = None
) -> tuple[keras.Model, dict[str, float]]:
    """After calibration, on validation only: the per-group coverage recalibration
    (`xpz.model.recalibration`), then the point estimate's shift chosen again on the recalibrated
    CDF (`xpz.model.calibration.choose_shift`), then the conformal intervals (`xpz.model.conformal`)
    for that point estimate, and the eligibility threshold (`xpz.model.ood`), stored in the model."""
    from xpz.model.calibration import choose_shift
    from xpz.model.ood import fit_eligibility
    from xpz.model.posthoc import fit_conformal, fit_recalibration

    summary: dict[str, float] = {}
    if cfg.coverage.enabled and posterior_layer(model) is not None:
        model, fitted = fit_recalibration(model, x_val, z_val, cfg.coverage)
        summary.update(fitted)
        if cfg.train.calibrate:
            summary.update(choose_shift(model, x_val, z_val, cfg, val_groups))
        if cfg.coverage.conformal:
            model, fitted = fit_conformal(model, x_val, z_val, cfg.coverage, cfg.evaluate.bin_width,
                                          cfg.evaluate.z_max, cfg.train.interval)  # fmt: skip
            summary.update(fitted)
            summary["val_coverage_68"] = fitted["val_coverage_68_conformal"]
    if cfg.eligibility.enabled:
        model, fitted = fit_eligibility(model, x_train, x_val, cfg.eligibility, cfg.data)
        summary.update(fitted)
    return model, summary


def train_model(
    splits,
    cfg: Config,
    hyperparameters: Mapping[str, Any] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Train on `splits.train`, early-stop on `splits.val`; calibrate a softmax head on `splits.val`.

    With `train.members` > 1, that many networks (seeds `train.seed`, `train.seed + 1`, ...) share
    the opt-in wall-time cap and are averaged into one model (`ensemble_model`) before calibration.
    The history, best epoch and throughput reported are the first member's; the others' curves are
    in the history as `member_<k>/<metric>`.
    """
    tcfg, mcfg = cfg.train, cfg.model
    keras.utils.set_random_seed(tcfg.seed)
    hp = resolve_hyperparameters(mcfg, hyperparameters)
    seed_arch = hyperparameters is None and mcfg.architecture == "seed"

    x_train, z_train = flux_matrix(splits.train), splits.train[TARGET_COLUMN].to_numpy(np.float32)
    x_val, z_val = flux_matrix(splits.val), splits.val[TARGET_COLUMN].to_numpy(np.float32)
    scaler: Scaler = fit_model_scaler(x_train, mcfg)
    lr = float(tcfg.learning_rate or hp.get("learning_rate", 1e-3))

    def build() -> keras.Model:
        return build_seed_model(scaler, mcfg, lr) if seed_arch else build_model(hp, mcfg, scaler, lr)

    edges = z_bin_edges(mcfg)
    weights = balance_weights(z_train, edges, tcfg.balance, tcfg.balance_max_weight)
    train_ds = make_dataset(x_train, z_train, weights, tcfg.batch_size, shuffle=True, seed=tcfg.seed)
    val_ds = make_dataset(x_val, z_val, batch_size=max(tcfg.batch_size, 1024))
    share = tcfg.max_seconds / tcfg.members if tcfg.max_seconds else None

    fits: list[MemberFit] = []
    for k in range(tcfg.members):
        if tcfg.members > 1 and tcfg.verbose:
            print(f"ensemble member {k + 1}/{tcfg.members}", flush=True)
        fits.append(
            fit_member(build, train_ds, val_ds, len(x_train), tcfg, lr, tcfg.seed + k, share, callbacks)
        )
    model = ensemble_model([f.model for f in fits])
    history = dict(fits[0].history)
    for k, f in enumerate(fits[1:], start=1):
        history.update({f"member_{k}/{key}": values for key, values in f.history.items()})

    calibration: dict[str, float] = {}
    layer = posterior_layer(model)
    if layer is not None:
        log_prior = training_log_prior(z_train, edges, mcfg.label_sigma, weights)
        if tcfg.calibrate:
            calibration = calibrate_posterior(model, x_val, z_val, log_prior, cfg)
        else:
            layer.set_calibration(log_prior=log_prior, alpha=tcfg.prior_alpha or 0.0, temperature=1.0)
            calibration = {"prior_alpha": float(tcfg.prior_alpha or 0.0), "temperature": 1.0}
    families = splits.val[FAMILY_COLUMN].astype(str).to_numpy() if FAMILY_COLUMN in splits.val else None
    model, reliability = _fit_reliability(model, x_train, x_val, z_val, cfg, families)
    calibration.update(reliability)
    return TrainResult(
        model=model,
        history=history,
        hyperparameters=hp,
        epochs=len(fits[0].history.get("loss", [])),
        seconds=sum(f.seconds for f in fits),
        samples_per_s=fits[0].samples_per_s,
        calibration=calibration,
        best_epoch=fits[0].best_epoch,
        members=len(fits),
        stopped_by_time_limit=any(f.stopped_by_time_limit for f in fits),
    )
