"""Architectures, scaling inside the model, save/load, the posterior head and predict_redshift."""

from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np
import pytest

from xpz.config import ConfigError, ModelConfig, config_from_dict
from xpz.model.architectures import (
    SEED_TRAINABLE_PARAMS,
    build_model,
    build_seed_model,
    flat_hyperparameters,
    posterior_layer,
    prune_hyperparameters,
    trainable_params,
)
from xpz.model.posterior import posterior_quantiles, predict_redshift, redshifts_from_output
from xpz.model.scaling import LogLambdaResampling, fit_scaler, loglambda_matrix
from xpz.model.tune import RedshiftHyperModel
from xpz.spectra import N_BP, N_FLUX, wavelengths_nm

TINY = {
    "conv_layers": 2, "filters_0": 4, "kernel_0": 3, "filters_1": 4, "kernel_1": 3,
    "dense_layers": 1, "units_0": 8, "activation": "relu", "optimizer": "adam", "learning_rate": 1e-3,
}  # fmt: skip


def _fluxes(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return (50 + 20 * rng.random((n, N_FLUX))).astype(np.float32)


def test_seed_model_has_table2_parameter_count():
    model = build_seed_model(fit_scaler(_fluxes()))
    assert trainable_params(model) == SEED_TRAINABLE_PARAMS == 699_073
    # Table 2, layer by layer
    counts = [int(sum(np.prod(w.shape) for w in layer.trainable_weights)) for layer in model.layers]
    assert [c for c in counts if c] == [1536, 327936, 98432, 16448, 147712, 65792, 32896, 8256, 65]


def test_seed_model_param_count_ignores_flux_normalisation():
    assert trainable_params(build_seed_model(fit_scaler(_fluxes(), normalize=True))) == 699_073


def test_scaler_fitted_on_given_split_and_layer_matches_numpy():
    train, other = _fluxes(50, 1), _fluxes(20, 2) * 3
    for normalize in (False, True):
        s = fit_scaler(train, normalize=normalize)
        t = s.transform(train)
        assert np.allclose(t.min(axis=0), 0, atol=1e-6) and np.allclose(t.max(axis=0), 1, atol=1e-5)
        out = keras.ops.convert_to_numpy(s.pixel_layer()(other))
        assert np.allclose(out, s.transform(other), atol=1e-4)
        lt = keras.ops.convert_to_numpy(s.log_total_layer()(other))
        assert np.allclose(lt, s.transform_log_total(other), atol=1e-4)


def test_asinh_scaler_standardises_asinh_of_unit_sum_fluxes_and_layer_matches_numpy():
    train, other = _fluxes(50, 1), _fluxes(20, 2) * 3
    other[0, :5] = -2.0  # negative samples (noise): asinh is defined there, unlike log
    s = fit_scaler(train, normalize=True, pixel_scaling="asinh", softening=1e-3)
    t = s.transform(train)
    assert np.allclose(t.mean(axis=0), 0, atol=1e-5) and np.allclose(t.std(axis=0), 1, atol=1e-4)
    u = train[3] / train[3].sum(dtype=np.float64)  # the formula, by hand, for one spectrum
    expected = (np.arcsinh(u / 1e-3) - s.offset) / s.scale
    assert np.allclose(t[3], expected, atol=1e-5)
    out = keras.ops.convert_to_numpy(s.pixel_layer()(other))
    assert np.all(np.isfinite(out)) and np.allclose(out, s.transform(other), atol=1e-4)
    assert np.allclose(s.transform(other * 7), s.transform(other), atol=1e-5)  # shape only, not brightness


def test_model_config_pixel_scaling_choices():
    assert ModelConfig().pixel_scaling == "asinh"
    with pytest.raises(ValueError, match="normalize_flux"):
        ModelConfig(normalize_flux=False)  # asinh's softening is in unit-sum flux
    assert ModelConfig(normalize_flux=False, pixel_scaling="minmax").pixel_scaling == "minmax"
    with pytest.raises(ValueError):
        ModelConfig(asinh_softening=0.0)
    with pytest.raises(ValueError, match="pixel_scaling"):
        fit_scaler(_fluxes(), normalize=True, pixel_scaling="log")  # type: ignore[arg-type]


def test_loglambda_matrix_interpolates_linearly_in_ln_wavelength():
    w = loglambda_matrix(256)
    assert w.shape == (N_FLUX, 256)
    assert np.allclose(w.sum(axis=0), 1.0)  # every output sample is a weighted mean of two inputs
    assert ((w > 0).sum(axis=0) <= 2).all()
    ln_wl = np.log(wavelengths_nm())
    grid = ln_wl.astype(np.float32) @ w  # ln(wavelength) itself comes out uniform: redshift is a shift
    assert np.allclose(np.diff(grid), (ln_wl[-1] - ln_wl[0]) / 255, rtol=1e-3)
    assert grid[0] == pytest.approx(ln_wl[0], abs=1e-5) and grid[-1] == pytest.approx(ln_wl[-1], abs=1e-5)
    # the 3 nm where the bands overlap are read from RP only: BP samples redder than RP's first get no weight
    bp_overlap = np.flatnonzero(wavelengths_nm()[:N_BP] >= wavelengths_nm()[N_BP])
    assert len(bp_overlap) == 1 and not w[bp_overlap].any()


def test_loglambda_grid_model_saves_and_loads(tmp_path):
    x = _fluxes(40)
    cfg = ModelConfig(bin_width=0.05, input_grid="loglambda", loglambda_pixels=64)
    scaler = fit_scaler(x, normalize=True, pixel_scaling="asinh")
    model = build_model({**TINY, "loss": "crossentropy"}, cfg, scaler)
    assert model.get_layer("conv_0").output.shape[1] == 64
    model.fit(x, np.linspace(0.01, 0.5, 40), epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # the grid travels with the model: its wavelengths are in the layer's config, not recomputed on load
    assert loaded.get_layer("loglambda").get_config()["wavelengths"] == pytest.approx(list(wavelengths_nm()))
    with pytest.raises(ValueError, match="loglambda_pixels"):
        ModelConfig(loglambda_pixels=8)


def test_loglambda_layer_uses_the_wavelengths_it_is_given():
    stretched = wavelengths_nm() + np.linspace(0.0, 20.0, N_FLUX)  # another dispersion model
    layer = LogLambdaResampling.from_config({"n_out": 32, "wavelengths": list(stretched)})
    assert np.array_equal(layer._w, loglambda_matrix(32, stretched))
    assert not np.allclose(layer._w, loglambda_matrix(32), atol=0.05)
    # a common factor is a shift in ln(wavelength): the grid moves with it, the weights do not change
    assert np.allclose(loglambda_matrix(32, 1.01 * wavelengths_nm()), loglambda_matrix(32), atol=1e-5)
    for bad in (stretched[:100], -stretched, stretched[::-1]):
        with pytest.raises(ValueError, match="increasing within BP"):
            loglambda_matrix(32, bad)


def test_scaler_rejects_wrong_shape():
    with pytest.raises(ValueError, match="186"):
        fit_scaler(np.zeros((3, 10)))


@pytest.mark.parametrize(("loss", "scaling"), [("crossentropy", "asinh"), ("huber", "minmax")])
def test_save_load_gives_identical_predictions(tmp_path, loss, scaling):
    x = _fluxes(40)
    cfg = ModelConfig(bin_width=0.05)
    model = build_model({**TINY, "loss": loss}, cfg, fit_scaler(x, normalize=True, pixel_scaling=scaling))
    if loss == "crossentropy":
        posterior_layer(model).set_calibration(
            log_prior=np.linspace(-1, -3, 12),
            alpha=0.5,
            temperature=0.7,
            shift_z=0.3,
            shift_gain=0.4,
            low_z=0.1,
            low_gain=0.2,
        )
    model.fit(x, np.linspace(0.01, 0.5, 40), epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    a, b = predict_redshift(model, x), predict_redshift(loaded, x)
    assert a.equals(b)
    if loss == "crossentropy":
        assert float(posterior_layer(loaded).alpha.numpy()) == pytest.approx(0.5)
        assert posterior_layer(loaded).point_estimate() == pytest.approx(
            {"shift_z": 0.3, "shift_gain": 0.4, "low_z": 0.1, "low_gain": 0.2}
        )


def test_predict_redshift_regression_has_nan_interval():
    x = _fluxes(10)
    model = build_model({**TINY, "loss": "mse"}, ModelConfig(), fit_scaler(x))
    out = predict_redshift(model, x)
    assert list(out.columns) == ["z", "z_lower", "z_upper", "ood_score", "eligible"] and len(out) == 10
    assert out["ood_score"].isna().all() and out["eligible"].all()  # no eligibility layer: not assessed
    assert out["z_lower"].isna().all() and out["z_upper"].isna().all()
    with pytest.raises(ValueError, match="186"):
        predict_redshift(model, x[:, :10])


def test_predict_redshift_distribution_interval_brackets_median():
    x = _fluxes(10)
    model = build_model({**TINY, "loss": "crossentropy"}, ModelConfig(), fit_scaler(x))
    out = predict_redshift(model, x)
    assert (out["z_lower"] <= out["z"]).all() and (out["z"] <= out["z_upper"]).all()
    assert ((out["z"] >= 0) & (out["z"] <= 0.6)).all()


def test_posterior_quantiles_hand_computed():
    edges = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    probs = np.array([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]])
    q = posterior_quantiles(probs, edges, (0.5, 0.16, 0.84))
    assert q[0] == pytest.approx([0.2, 0.132, 0.268])
    assert q[1] == pytest.approx([0.2, 0.064, 0.336])
    assert q[2] == pytest.approx([0.15, 0.116, 0.184])
    z, lo, hi = redshifts_from_output(probs, edges)
    assert z == pytest.approx(q[:, 0]) and lo == pytest.approx(q[:, 1])


def test_shifted_point_estimate_is_the_quantile_raised_by_high_z_mass():
    edges = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    z, lo, hi = redshifts_from_output(probs, edges, shift_z=0.2, shift_gain=0.4)
    # row 0: P(z > 0.2) = 0.5 -> quantile 0.7; the 68% interval [0.32, 1.0] is moved inside [0, 1]
    assert z[0] == pytest.approx(0.28) and lo[0] == pytest.approx(0.128) and hi[0] == pytest.approx(0.4)
    # row 1: no mass above 0.2 -> the median and the central interval, as without a shift
    assert z[1] == pytest.approx(0.05) and (lo[1], hi[1]) == pytest.approx((0.016, 0.084))
    # row 2: all mass above -> quantile 0.9, clipped interval [0.32, 1.0]
    assert z[2] == pytest.approx(0.39) and (lo[2], hi[2]) == pytest.approx((0.332, 0.4))
    assert ((lo <= z) & (z <= hi)).all()
    # a zero gain is the median, whatever shift_z
    assert redshifts_from_output(probs, edges, shift_z=0.2)[0] == pytest.approx([0.2, 0.05, 0.35])


def test_posterior_layer_loads_weights_saved_before_the_shift_existed():
    from xpz.model.architectures import RedshiftPosterior

    layer = RedshiftPosterior([0.0, 0.1, 0.2, 0.3])
    layer.build((None, 3))
    layer.load_own_variables({"0": np.log([0.5, 0.3, 0.2]), "1": np.float32(0.25), "2": np.float32(0.8)})
    assert layer.log_prior.numpy() == pytest.approx(np.log([0.5, 0.3, 0.2]))
    assert float(layer.alpha.numpy()) == 0.25 and float(layer.temperature.numpy()) == pytest.approx(0.8)
    assert layer.point_estimate() == {
        "shift_z": 0.0,
        "shift_gain": 0.0,
        "low_z": 0.0,
        "low_gain": 0.0,
    }  # the median


def test_choose_candidate_takes_the_cheapest_candidate_that_reaches_the_bias_it_can():
    from xpz.model.calibration import Candidate, choose_candidate

    def cand(mae, bias, gain):
        return Candidate(0.0, 1.0, 0.35, gain, {"mae": mae, "worst_bin_bias": bias})

    median, mild, strong = cand(0.0120, -0.05, 0.0), cand(0.0124, -0.019, 0.2), cand(0.0130, -0.005, 0.5)
    # mild and strong reach the target: the cheaper one wins
    assert choose_candidate([median, mild, strong], bias_target=0.02, bias_slack=0.005) is mild
    # only strong reaches a tight target
    assert choose_candidate([median, mild, strong], bias_target=0.01, bias_slack=0.005) is strong
    # a target the median already keeps: any shift only costs MAE
    assert choose_candidate([median, mild, strong], bias_target=0.06, bias_slack=0.005) is median
    # out of reach (least bias 0.026): within the slack of it (<= 0.031), the smallest MAE wins,
    # not the last thousandth of bias at 0.0141
    floor, near, far = cand(0.0141, -0.026, 0.8), cand(0.0129, 0.030, 0.6), cand(0.0124, -0.035, 0.6)
    assert choose_candidate([median, far, near, floor], bias_target=0.025, bias_slack=0.005) is near
    assert choose_candidate([median, far, near, floor], bias_target=0.025, bias_slack=0.0) is floor
    # equal MAE: the smaller bias
    twin = cand(0.0129, -0.027, 0.8)
    assert choose_candidate([near, twin, floor], bias_target=0.025, bias_slack=0.005) is twin
    # no populated bin (NaN bias) counts as unbiased
    nan = cand(0.0119, float("nan"), 0.0)
    assert choose_candidate([median, nan], bias_target=0.02, bias_slack=0.0) is nan


def test_posterior_alpha_divides_out_prior_and_temperature_sharpens():
    from xpz.model.architectures import RedshiftPosterior

    layer = RedshiftPosterior([0.0, 0.1, 0.2, 0.3])
    log_prior = np.log([0.7, 0.2, 0.1])
    logits = np.log([[0.7, 0.2, 0.1]]).astype("float32")  # the network output = the prior
    layer.build((None, 3))
    layer.set_calibration(log_prior=log_prior, alpha=1.0, temperature=1.0)
    assert keras.ops.convert_to_numpy(layer(logits)) == pytest.approx(np.full((1, 3), 1 / 3), abs=1e-6)
    layer.set_calibration(alpha=0.0, temperature=0.5)
    p = keras.ops.convert_to_numpy(layer(logits))[0]
    assert p == pytest.approx(np.array([0.49, 0.04, 0.01]) / 0.54, abs=1e-6)


def test_hypermodel_builds_within_bounds():
    x = _fluxes(8)
    cfg = config_from_dict(
        {"model": {"search": {"conv_layers": [1, 2], "filters": [4, 8], "filters_step": 4,
                              "kernel_size": [2, 3], "dense_layers": [1, 2], "units": [4, 8],
                              "units_step": 4, "losses": ["crossentropy", "huber"]}}}
    ).model  # fmt: skip
    hm = RedshiftHyperModel(cfg, fit_scaler(x))
    hp = kt.HyperParameters()
    model = hm.build(hp)
    values = prune_hyperparameters(hp.values)
    assert 1 <= values["conv_layers"] <= 2 and 4 <= values["filters_0"] <= 8
    assert values["loss"] in ("crossentropy", "huber")
    assert model.output_shape[-1] in (1, round(cfg.z_max / cfg.bin_width))


def test_flat_hyperparameters_of_default_config():
    flat = flat_hyperparameters(ModelConfig().default)
    assert flat["conv_layers"] == len(ModelConfig().default.conv_filters)
    assert prune_hyperparameters({**flat, "filters_9": 3}) == flat


@pytest.mark.parametrize(
    "override, key",
    [
        ({"model": {"search": {"filters": [128, 16]}}}, "filters: min (128) must not exceed max (16)"),
        ({"model": {"search": {"learning_rate": [0.01, 0.001]}}}, "learning_rate: min"),
        ({"model": {"search": {"losses": ["hinge"]}}}, "losses: unknown"),
        ({"model": {"default": {"conv_filters": [8], "conv_kernels": [3, 3]}}}, "conv_kernels"),
        ({"model": {"bin_width": 0.07}}, "bin_width"),
        ({"tune": {"max_trials": 0}}, "tune.max_trials"),
        ({"train": {"alpha_grid": [2.0]}}, "alpha_grid"),
        ({"train": {"bogus": 1}}, "train.bogus: unknown key"),
    ],
)
def test_bad_hyperparameter_bounds_give_clear_error(override, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(override)
    assert key in str(err.value)


def test_too_deep_valid_padding_is_a_clear_error():
    hp = {**TINY, "conv_layers": 7, **{f"filters_{i}": 2 for i in range(7)},
          **{f"kernel_{i}": 5 for i in range(7)}, "loss": "mse"}  # fmt: skip
    with pytest.raises(ConfigError, match="too short"):  # ConfigError: the CLI prints it, exit 2
        build_model(hp, ModelConfig(padding="valid"), fit_scaler(_fluxes(4)))
    with pytest.raises(ConfigError, match="too short .* a larger model.loglambda_pixels"):
        build_model(hp, ModelConfig(input_grid="loglambda", loglambda_pixels=64), fit_scaler(_fluxes(4)))
