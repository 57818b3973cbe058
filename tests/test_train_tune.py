"""Training lowers the loss and calibrates; tuning runs N trials, reports each, and resumes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xpz.config import config_from_dict
from xpz.spectra import DATASET_COLUMNS, FLUX_COLUMNS, N_FLUX

TINY_DEFAULT = {"conv_filters": [4, 4], "conv_kernels": [3, 3], "dense_units": [16],
                "learning_rate": 0.01}  # fmt: skip
TINY_SEARCH = {"conv_layers": [1, 2], "filters": [4, 8], "filters_step": 4, "kernel_size": [2, 3],
               "dense_layers": [1, 1], "units": [8, 16], "units_step": 8}  # fmt: skip


def _frame(n, seed):
    """Spectra with a bump whose position moves with z: learnable by a tiny CNN in a few epochs."""
    rng = np.random.default_rng(seed)
    z = np.clip(rng.gamma(3.3, 0.043, n), 0.005, 0.6)
    pix = np.arange(N_FLUX)
    flux = 20 + 80 * np.exp(-0.5 * ((pix[None, :] - 40 - 200 * z[:, None]) / 8) ** 2)
    flux = flux * rng.uniform(0.5, 2.0, (n, 1)) + rng.normal(0, 1, flux.shape)
    df = pd.DataFrame(flux.astype(np.float32), columns=list(FLUX_COLUMNS))
    df.insert(0, "z", z)
    df.insert(0, "source_id", np.arange(n, dtype=np.int64) + seed * 100_000)
    return df[list(DATASET_COLUMNS)]


@pytest.fixture(scope="module")
def splits():
    from xpz.data.split import split_digest

    parts = {"train": _frame(600, 1), "val": _frame(300, 2), "test": _frame(200, 3)}
    return SimpleNamespace(**parts, digests={k: split_digest(v["source_id"]) for k, v in parts.items()})


def _cfg(**sections):
    raw = {
        "model": {"default": TINY_DEFAULT, "search": TINY_SEARCH, "bin_width": 0.02},
        "train": {"epochs": 6, "batch_size": 64, "verbose": 0, "patience": 6, "monitor": "val_mae"},
        "tune": {"epochs": 1, "max_trials": 2, "max_train_samples": 300},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_training_lowers_the_loss_and_calibrates(splits):
    from xpz.model.architectures import posterior_layer
    from xpz.model.posterior import predict_redshift
    from xpz.model.train import train_model

    result = train_model(splits, _cfg(train={"alpha_grid": [0.0, 1.0]}))
    h = result.history
    assert h["loss"][-1] < h["loss"][0] and min(h["val_mae"]) < h["val_mae"][0]
    assert result.epochs == len(h["loss"]) == 6 and result.seconds > 0 and result.samples_per_s > 0
    assert result.hyperparameters["conv_layers"] == 2
    cal = result.calibration
    assert cal["prior_alpha"] in (0.0, 1.0) and cal["temperature"] > 0
    assert 0.5 < cal["val_coverage_68"] < 0.85  # temperature chosen for 68% on validation
    layer = posterior_layer(result.model)
    assert float(layer.alpha.numpy()) == cal["prior_alpha"]
    pred = predict_redshift(result.model, splits.test[list(FLUX_COLUMNS)].to_numpy(np.float32))
    assert np.abs(pred["z"] - splits.test["z"]).mean() < 0.05


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_ensemble_averages_member_logits_and_survives_save_load(splits, tmp_path: Path):
    import keras

    from xpz.model.architectures import posterior_layer
    from xpz.model.posterior import predict_redshift
    from xpz.model.train import train_model

    result = train_model(splits, _cfg(train={"members": 2, "alpha_grid": [0.5]}))
    model = result.model
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert result.members == 2 and len(members) == 2
    assert len(result.history["loss"]) == len(result.history["member_1/loss"]) == 6
    # one posterior over the mean of the members' logits, calibrated on validation
    head = posterior_layer(model)
    assert float(head.alpha.numpy()) == 0.5 == result.calibration["prior_alpha"]
    x = splits.test[list(FLUX_COLUMNS)].to_numpy(np.float32)
    logits = np.mean([keras.ops.convert_to_numpy(m(x)) for m in members], axis=0)
    a = (logits - 0.5 * head.log_prior.numpy()) / float(head.temperature.numpy())
    expected = np.exp(a - a.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    # the members differ (seeds), and the saved ensemble predicts the same redshifts
    assert not np.allclose(
        keras.ops.convert_to_numpy(members[0](x)), keras.ops.convert_to_numpy(members[1](x))
    )
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(predict_redshift(loaded, x)["z"], predict_redshift(model, x)["z"], atol=1e-6)
    assert np.abs(predict_redshift(model, x)["z"] - splits.test["z"]).mean() < 0.05


def test_training_regression_head_with_balance_and_time_cap(splits):
    from xpz.model.train import train_model

    cfg = _cfg(
        model={"default": {**TINY_DEFAULT, "loss": "huber"}},
        train={"epochs": 1000, "balance": 0.5, "max_seconds": 1, "lr_schedule": "cosine"},
    )
    result = train_model(splits, cfg)
    # no posterior to calibrate or recalibrate; the eligibility threshold is still fitted on validation
    assert set(result.calibration) == {"ood_threshold", "ood_keep", "ood_val_eligible", "ood_cut_residual",
                                       "ood_cut_density", "ood_cut_template", "ood_cut_star"}  # fmt: skip
    assert (
        result.epochs < 1000 and result.seconds < 30 and result.stopped_by_time_limit
    )  # the opt-in cap stopped it
    assert result.hyperparameters["loss"] == "huber"


def test_balance_weights_emphasise_rare_redshifts():
    from xpz.model.train import balance_weights

    z = np.r_[np.full(90, 0.1), np.full(10, 0.4)]
    w = balance_weights(z, np.linspace(0, 0.6, 13), balance=1.0)
    assert w.mean() == pytest.approx(1.0, abs=1e-6) and w[-1] / w[0] == pytest.approx(9.0, rel=1e-5)
    assert balance_weights(z, np.linspace(0, 0.6, 13), balance=0.0) is None


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_tune_runs_trials_reports_each_and_resumes(splits, tmp_path: Path):
    from xpz.model.tune import tune

    seen = []
    first = tune(splits, _cfg(), tmp_path / "tuning", on_trial_end=seen.append)
    assert len(seen) == 2 and len(first.trials) == 2
    assert all(t.status == "COMPLETED" and "val_mae" in t.metrics for t in seen)
    assert {t.trial_id for t in seen} == {t.trial_id for t in first.trials}
    assert first.best_hyperparameters["conv_layers"] in (1, 2)
    assert "filters_2" not in first.best_hyperparameters
    # the first trial is the default architecture, clipped to the search bounds
    assert seen[0].hyperparameters == {
        "conv_layers": 2, "filters_0": 4, "kernel_0": 3, "filters_1": 4, "kernel_1": 3,
        "dense_layers": 1, "units_0": 16, "activation": "relu", "loss": "crossentropy",
        "optimizer": "adam", "learning_rate": pytest.approx(0.004),  # params' 0.003, clipped to the bounds
    }  # fmt: skip

    # the same directory continues: a larger max_trials runs only the new trial
    more = []
    second = tune(splits, _cfg(tune={"max_trials": 3}), tmp_path / "tuning", on_trial_end=more.append)
    assert len(more) == 1 and len(second.trials) == 3
    assert more[0].trial_id not in {t.trial_id for t in seen}
    # and a finished search run again does nothing
    again = []
    tune(splits, _cfg(tune={"max_trials": 3}), tmp_path / "tuning", on_trial_end=again.append)
    assert again == []


def test_search_keeps_the_default_unless_clearly_better():
    from xpz.model.tune import TrialRecord, keep_default_unless_better

    default_hp, other_hp = {"conv_layers": 2, "units_0": 16}, {"conv_layers": 1, "units_0": 8}
    trials = [
        TrialRecord("00", default_hp, {"score": 0.0200}, "COMPLETED"),
        TrialRecord("01", other_hp, {"score": 0.0196}, "COMPLETED"),
    ]
    assert keep_default_unless_better(trials, "01", default_hp, 0.03, "min").trial_id == "00"  # 2% < 3%
    assert keep_default_unless_better(trials, "01", default_hp, 0.01, "min").trial_id == "01"
    assert keep_default_unless_better(trials, "01", default_hp, 0.0, "min").trial_id == "01"
    # without a finished default trial the best one stands
    assert keep_default_unless_better(trials[1:], "01", default_hp, 0.5, "min").trial_id == "01"


def test_search_key_separates_incomparable_searches():
    from xpz.model.tune import search_key

    digests = {"train": "a", "val": "b", "test": "c"}
    base = search_key(_cfg(), digests)
    assert search_key(_cfg(tune={"max_trials": 9}), digests) == base  # a search may grow and resume
    assert search_key(_cfg(tune={"epochs": 2}), digests) != base  # scores per trial mean something else
    assert search_key(_cfg(model={"search": {**TINY_SEARCH, "units": [8, 32]}}), digests) != base
    assert search_key(_cfg(), {**digests, "val": "other"}) != base  # another split


def test_tune_module_does_not_import_mlflow():
    import xpz.model.tune

    source = Path(xpz.model.tune.__file__).read_text()
    assert "import mlflow" not in source and "from mlflow" not in source
