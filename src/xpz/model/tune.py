"""keras-tuner BayesianOptimization over the seed's search space (bounds in params `model.search`).

Resumable: the oracle state lives in `directory/<project_name>-<search key>`; calling `tune` again
with the same parameters continues the search (finished trials are kept, only the missing ones run;
raise `tune.max_trials` to search further). The search key hashes everything that makes trials
comparable (search space, per-trial budget, objective, data split), so changing any of it starts a
new search instead of resuming one whose scores mean something else. The first trial runs the CPU default architecture
(`model.default`, clipped to the bounds), so the search always measures it; the search's best trial
replaces it only if it wins a paired comparison over `tune.confirm_seeds` seeds at equal budget by
`tune.min_improvement` on average (`xpz.model.selection`; with `confirm_seeds: 0` the bare proxy rule
`keep_default_unless_better`).
`on_trial_end(TrialRecord)` is called after each trial that runs in this call: the tracking layer
uses it to log nested MLflow runs (this module never imports mlflow). Trials may run on a
subsample of train/validation (`tune.max_train_samples`, `tune.max_val_samples`) to keep a CPU
search small; the scaling is always fitted on all of train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import keras_tuner as kt
import numpy as np

from xpz.config import ModelConfig
from xpz.files import json_digest
from xpz.model.architectures import build_model, flat_hyperparameters, prune_hyperparameters
from xpz.model.scaling import Scaler, fit_model_scaler
from xpz.model.train import make_dataset
from xpz.spectra import TARGET_COLUMN, flux_matrix

if TYPE_CHECKING:
    from xpz.config import Config


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


@dataclass
class TrialRecord:
    trial_id: str
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]  # best value of each metric over the trial's epochs, plus "score"
    status: str  # COMPLETED, FAILED, INVALID, ...


@dataclass
class TuneResult:
    best_hyperparameters: dict[str, Any]
    trials: list[TrialRecord] = field(default_factory=list)
    best_trial_id: str | None = None
    directory: Path | None = None
    decision: Any = None  # xpz.model.selection.Decision of the paired confirmation (None: none ran)


def trial_record(trial: kt.engine.trial.Trial) -> TrialRecord:
    metrics: dict[str, float] = {}
    for name in trial.metrics.metrics:
        best = trial.metrics.get_best_value(name)
        if best is not None:
            metrics[name] = float(best)
    if trial.score is not None:
        metrics["score"] = float(trial.score)
    try:
        hps = prune_hyperparameters(trial.hyperparameters.values)
    except KeyError:
        hps = dict(trial.hyperparameters.values)
    return TrialRecord(str(trial.trial_id), hps, metrics, str(trial.status))


class _DefaultFirstOracle(kt.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation whose first trial runs the space's defaults (the CPU default model)."""

    def populate_space(self, trial_id):
        if not self.trials:
            return {"status": "RUNNING", "values": {hp.name: hp.default for hp in self.hyperparameters.space}}
        return super().populate_space(trial_id)


class _Tuner(kt.Tuner):
    """A keras-tuner Tuner (Bayesian oracle above) that reports each finished trial to a hook."""

    def __init__(self, *args, on_trial_end: Callable[[TrialRecord], None] | None = None, **kwargs):
        self._hook = on_trial_end
        super().__init__(*args, **kwargs)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self._hook is not None:
            self._hook(trial_record(self.oracle.get_trial(trial.trial_id)))


def search_key(cfg: Config, digests: dict[str, str]) -> str:
    """Short hash of what makes trials comparable; `max_trials` is left out so a search can grow."""
    tune_part = cfg.tune.model_dump(mode="json", exclude={"max_trials", "directory", "project_name"})
    payload = {
        "model": cfg.model.model_dump(mode="json"),
        "tune": tune_part,
        "batch_size": cfg.train.batch_size,
        "splits": dict(sorted(digests.items())),
    }
    return json_digest(payload)[:10]


def search_directory(cfg: Config, digests: dict[str, str], directory: Path | str | None = None) -> Path:
    """Where the search for these settings lives: `<tune.directory>/<project_name>-<search key>`."""
    base = Path(directory if directory is not None else cfg.tune.directory)
    return base / f"{cfg.tune.project_name}-{search_key(cfg, digests)}"


def _subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    idx = np.arange(n)
    if limit is None or limit >= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def tune(
    splits,
    cfg: Config,
    directory: Path | str | None = None,
    on_trial_end: Callable[[TrialRecord], None] | None = None,
) -> TuneResult:
    """Run (or continue) the Bayesian search; returns the best hyperparameters and all trials."""
    tcfg = cfg.tune
    keras.utils.set_random_seed(tcfg.seed)

    x_train, z_train = flux_matrix(splits.train), splits.train[TARGET_COLUMN].to_numpy(np.float32)
    x_val, z_val = flux_matrix(splits.val), splits.val[TARGET_COLUMN].to_numpy(np.float32)
    scaler = fit_model_scaler(x_train, cfg.model)
    it = _subsample(len(x_train), tcfg.max_train_samples, tcfg.seed)
    iv = _subsample(len(x_val), tcfg.max_val_samples, tcfg.seed + 1)
    train_ds = make_dataset(
        x_train[it], z_train[it], batch_size=cfg.train.batch_size, shuffle=True, seed=tcfg.seed
    )
    val_ds = make_dataset(x_val[iv], z_val[iv], batch_size=max(cfg.train.batch_size, 1024))

    oracle = _DefaultFirstOracle(
        objective=kt.Objective(tcfg.objective, direction=tcfg.direction),
        max_trials=tcfg.max_trials,
        num_initial_points=tcfg.num_initial_points,
        seed=tcfg.seed,
    )
    project_dir = search_directory(cfg, splits.digests, directory)
    ran: list[TrialRecord] = []

    def record(trial: TrialRecord) -> None:
        ran.append(trial)
        if on_trial_end is not None:
            on_trial_end(trial)

    tuner = _Tuner(
        oracle=oracle,
        hypermodel=RedshiftHyperModel(cfg.model, scaler),
        directory=str(project_dir.parent),
        project_name=project_dir.name,
        overwrite=False,
        on_trial_end=record,
    )
    tuner.search(train_ds, validation_data=val_ds, epochs=tcfg.epochs, verbose=cfg.train.verbose)

    if not hasattr(tuner.oracle, "trials"):
        # A distributed worker (KERASTUNER_TUNER_ID=tuner*): its oracle is a client of the chief,
        # which holds the search; the worker knows only the trials it ran.
        return TuneResult(best_hyperparameters={}, trials=ran, best_trial_id=None, directory=project_dir)
    trials = [trial_record(t) for t in tuner.oracle.trials.values()]
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise RuntimeError(f"tune: no successful trial in {project_dir}")
    defaults = prune_hyperparameters({hp.name: hp.default for hp in tuner.oracle.hyperparameters.space})
    best_id = str(best[0].trial_id)
    decision = None
    if tcfg.confirm_seeds == 0:  # the bare proxy rule (noisy: see xpz.model.selection)
        chosen = keep_default_unless_better(trials, best_id, defaults, tcfg.min_improvement, tcfg.direction)
    else:
        chosen, decision = _confirm(
            trials, best_id, defaults, cfg, scaler, (x_train[it], z_train[it]), val_ds, project_dir
        )
    return TuneResult(
        best_hyperparameters=chosen.hyperparameters,
        trials=trials,
        best_trial_id=chosen.trial_id,
        directory=project_dir,
        decision=decision,
    )


def _confirm(trials, best_id, defaults, cfg: Config, scaler, train, val_ds, project_dir: Path):
    """The search's best trial against the default: paired training over `tune.confirm_seeds` seeds
    at equal budget (`xpz.model.selection.decide`); returns (chosen trial, Decision or None)."""
    from xpz.model.selection import decide, paired_scores

    tcfg = cfg.tune
    best = next(t for t in trials if t.trial_id == best_id)
    default = next((t for t in trials if t.hyperparameters == defaults and "score" in t.metrics), None)
    if default is None or default is best:
        return best, None
    epochs = tcfg.confirm_epochs or tcfg.epochs
    pick = min if tcfg.direction == "min" else max

    def fit_score(hp: dict[str, Any], seed: int) -> float:
        keras.utils.set_random_seed(seed)
        model = build_model(hp, cfg.model, scaler)
        ds = make_dataset(train[0], train[1], batch_size=cfg.train.batch_size, shuffle=True, seed=seed)
        history = model.fit(ds, validation_data=val_ds, epochs=epochs, verbose=0).history
        return float(pick(history[tcfg.objective]))

    seeds = [tcfg.seed + k for k in range(tcfg.confirm_seeds)]
    d, c = paired_scores(
        fit_score, defaults, best.hyperparameters, seeds, cache=project_dir / "confirmation.json"
    )
    decision = decide(d, c, tcfg.min_improvement, tcfg.direction)
    if cfg.train.verbose:
        print(f"tune: trial {best.trial_id} vs the default over seeds {seeds}: {decision.reason}", flush=True)
    return (best if decision.replace else default), decision


def keep_default_unless_better(
    trials: list[TrialRecord], best_id: str, defaults: dict[str, Any], min_improvement: float, direction: str
) -> TrialRecord:
    """The search's best trial, or the default architecture's trial when the best beats it by less
    than `min_improvement` (relative): short proxy trials are noisy, and a proxy win that small is
    more often noise than a better final model."""
    by_id = {t.trial_id: t for t in trials}
    best = by_id[best_id]
    default = next((t for t in trials if t.hyperparameters == defaults and "score" in t.metrics), None)
    if default is None or default is best or "score" not in best.metrics:
        return best
    gain = (default.metrics["score"] - best.metrics["score"]) * (1 if direction == "min" else -1)
    return best if gain > min_improvement * abs(default.metrics["score"]) else default
