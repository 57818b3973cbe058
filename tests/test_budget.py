"""Budgets in work, not time; host tags; the tuning rule that noise cannot win (issue 14).

Training runs `train.epochs` x steps unless the opt-in `train.max_seconds` stops it, and then the run
says so (TrainResult flag, warning, MLflow tag). The tuning decision rule is checked on constructed
paired scores, and a real search with a confirmation decides the same way twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_train_tune import TINY_DEFAULT, _cfg, splits  # noqa: F401  (the module's fixture)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- budget


def test_the_default_and_smoke_profiles_have_no_clock():
    from xpz.config import load_config

    for profile in ("default", "smoke", "full"):
        assert load_config(REPO / "params.yaml", profile=profile).train.max_seconds is None, profile


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_without_a_time_limit_training_runs_every_epoch(splits):  # noqa: F811
    from xpz.model.train import train_model

    cfg = _cfg(
        train={"epochs": 3, "patience": 50, "lr_schedule": "cosine", "members": 2, "max_seconds": None}
    )
    result = train_model(splits, cfg)
    assert result.epochs == 3 and len(result.history["member_1/loss"]) == 3
    assert result.stopped_by_time_limit is False


def test_cosine_schedule_depends_on_steps_only():
    import keras

    from xpz.model.train import CosineProgress

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="mse")
    cb = CosineProgress(base_lr=1.0, total_steps=4, floor=0.0)
    cb.set_model(model)
    lrs = []
    for step in range(5):
        cb.on_train_batch_begin(step)
        lrs.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    np.testing.assert_allclose(
        lrs, [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0], atol=1e-6
    )


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_a_set_time_limit_that_stops_training_tags_the_run(splits, tmp_path):  # noqa: F811
    from xpz import tracking
    from xpz.config import TrackingConfig
    from xpz.pipeline import train_step

    cfg = _cfg(train={"epochs": 500, "patience": 1000, "max_seconds": 1, "members": 1})
    tr = tracking.configure(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db",
                                           artifact_location=str(tmp_path / "mlruns"), experiment="budget"))  # fmt: skip
    run_id = tracking.start_run(tr, "limited")
    with pytest.warns(RuntimeWarning, match="max_seconds"):
        result = train_step(splits, cfg, None, tr, run_id)
    assert result.stopped_by_time_limit and result.epochs < 500
    tags = tr.client.get_run(run_id).data.tags
    assert tags["xpz.stopped_by_time_limit"] == "true"
    assert int(tags["xpz.host.cores"]) >= 1 and float(tags["xpz.host.sgemm_gflops"]) > 0
    assert tags["xpz.host.tensorflow"][0].isdigit() and tags["xpz.host.cpu"]

    # the same step without a limit runs to the end and says so
    run2 = tracking.start_run(tr, "unlimited")
    free = train_step(splits, _cfg(train={"epochs": 2, "patience": 50, "max_seconds": None}), None, tr, run2)
    assert free.epochs == 2
    assert tr.client.get_run(run2).data.tags["xpz.stopped_by_time_limit"] == "false"


def test_host_facts_and_flop_count():
    import keras

    from xpz import hostinfo

    facts = hostinfo.host_facts()
    assert facts["cores"] >= 1 and facts["sgemm_gflops"] > 0 and isinstance(facts["cpu"], str)
    dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4)])
    assert hostinfo.training_flops_per_sample(dense) == 6 * 10 * 4
    conv = keras.Sequential([keras.Input((20, 2)), keras.layers.Conv1D(3, 5)])  # 16 positions x 5 x 2 x 3
    assert hostinfo.training_flops_per_sample(conv) == 6 * 16 * 5 * 2 * 3


# ------------------------------------------------------------------------------------- tuning rule


def test_decision_needs_every_seed_pair_and_the_mean_margin():
    from xpz.model.selection import decide

    # 4% and 5% better in both pairs: replace
    assert decide([0.0200, 0.0210], [0.0192, 0.01995], 0.03).replace
    # better on average (4.5%) but lost one pair: seed noise, the default stays
    lost = decide([0.0200, 0.0210], [0.0180, 0.0211], 0.03)
    assert not lost.replace and "lost" in lost.reason and lost.gains[1] < 0
    # won both pairs by less than the margin
    small = decide([0.0200, 0.0200], [0.0198, 0.0196], 0.03)
    assert not small.replace and small.mean_gain == pytest.approx(0.015)
    # a tie is no win; NaN or no pair keeps the default
    assert not decide([0.02, 0.02], [0.02, 0.01], 0.0).replace
    assert not decide([0.02, float("nan")], [0.01, 0.01], 0.0).replace
    assert not decide([], [], 0.0).replace
    # a maximised objective
    assert decide([0.80, 0.82], [0.86, 0.88], 0.03, direction="max").replace
    assert not decide([0.80, 0.82], [0.78, 0.88], 0.03, direction="max").replace
    with pytest.raises(ValueError, match="length"):
        decide([0.02], [0.01, 0.01], 0.0)


def test_paired_scores_are_cached_per_architecture_and_seed(tmp_path):
    from xpz.model.selection import paired_scores

    calls = []

    def fit_score(hp, seed):
        calls.append((hp["units_0"], seed))
        return hp["units_0"] / 1000 + seed / 1e5

    cache = tmp_path / "confirmation.json"
    d, c = paired_scores(fit_score, {"units_0": 16}, {"units_0": 8}, [42, 43], cache=cache)
    assert d == [0.016 + 42e-5, 0.016 + 43e-5] and c == [0.008 + 42e-5, 0.008 + 43e-5]
    assert sorted(calls) == [(8, 42), (8, 43), (16, 42), (16, 43)]
    again = paired_scores(fit_score, {"units_0": 16}, {"units_0": 8}, [42, 43], cache=cache)
    assert again == (d, c) and len(calls) == 4  # nothing trained twice


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_search_with_confirmation_decides_and_logs_the_same_way_twice(splits, tmp_path):  # noqa: F811
    from xpz.model.tune import tune

    cfg = _cfg(tune={"max_trials": 2, "confirm_seeds": 2, "confirm_epochs": 1, "min_improvement": 0.5})
    first = tune(splits, cfg, tmp_path / "a")
    second = tune(splits, cfg, tmp_path / "b")  # a fresh search folder: everything runs again
    assert first.best_hyperparameters == second.best_hyperparameters
    # a 50% margin is out of reach for these tiny models: the default architecture is kept
    assert first.best_hyperparameters == second.trials[0].hyperparameters
    if first.decision is not None:  # the search's best was another trial: the pairs were trained
        assert len(first.decision.default_scores) == 2 and not first.decision.replace
        assert (first.directory / "confirmation.json").exists()


def test_a_stride_2_input_stem_halves_the_work_and_is_kept_by_every_trial():
    import keras_tuner as kt

    from xpz.config import HyperparametersConfig, ModelConfig
    from xpz.hostinfo import training_flops_per_sample
    from xpz.model.architectures import build_model, flat_hyperparameters
    from xpz.model.scaling import fit_scaler
    from xpz.model.tune import RedshiftHyperModel

    scaler = fit_scaler(np.random.default_rng(0).uniform(1, 50, (64, 186)).astype(np.float32), normalize=True)
    plain = HyperparametersConfig(conv_filters=[8, 8], conv_kernels=[5, 3], dense_units=[16])
    stem = plain.model_copy(update={"stem_stride": 2})
    assert "stem_stride" not in flat_hyperparameters(plain)  # old flat dicts and searches unchanged
    a = build_model(flat_hyperparameters(plain), ModelConfig(), scaler)
    b = build_model(flat_hyperparameters(stem), ModelConfig(), scaler)
    assert a.get_layer("conv_0").output.shape[1] == 186 and b.get_layer("conv_0").output.shape[1] == 93
    conv = [training_flops_per_sample(m) - 6 * sum(np.prod(lay.kernel.shape) for lay in m.layers if lay.name.startswith(("dense", "logits")))
            for m in (a, b)]  # fmt: skip
    assert conv[1] == pytest.approx(conv[0] / 2, rel=0.02)
    values = RedshiftHyperModel(ModelConfig(default=stem), scaler).declare(kt.HyperParameters())
    assert values["stem_stride"] == 2
