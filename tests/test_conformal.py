"""Conformal intervals per bin of true z x S/N or p(z) width (`xpz.model.conformal`), median-grouped recalibration,
the shift chosen on the served CDF, and coverage per S/N quartile (`xpz.model.coverage_report`)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from xpz.spectra import flux_matrix
from xpz_models import tiny_keras_model

EDGES = np.linspace(0.0, 0.6, 121)
LEVEL = 0.68


def constructed(n: int, seed: int):
    """Galaxies whose true z is drawn from their own p(z) (a discretised Gaussian around mu, wider
    for fainter galaxies), mu from a steeply falling prior: calibrated overall and per predicted z,
    but not per bin of true z. Returns (cdf (n, 121), z_true, fluxes (n, 186))."""
    from xpz.model.posterior import _row_quantiles

    rng = np.random.default_rng(seed)
    flux = rng.uniform(0.5, 2.0, n)
    mu = np.minimum(0.03 + rng.exponential(0.08, n), 0.5)
    centres = 0.5 * (EDGES[1:] + EDGES[:-1])
    p = np.exp(-0.5 * ((centres[None] - mu[:, None]) / (0.03 / flux[:, None])) ** 2)
    cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(p / p.sum(1, keepdims=True), 1)], 1)
    z_true = _row_quantiles(cdf, EDGES, rng.uniform(size=n))
    return cdf, z_true, np.repeat(flux[:, None] / 186.0, 186, axis=1)


def _tolerance(n: int) -> float:
    """3 sigma of the difference of two binomial shares (validation thresholds, test coverage)."""
    return 3.0 * np.sqrt(2.0 * LEVEL * (1 - LEVEL) / n)


@pytest.fixture(scope="module")
def constructed_fit():
    from xpz.model.conformal import ConformalIntervals, category_edges

    val, test = constructed(20000, 1), constructed(20000, 2)
    q = np.full(len(val[1]), 0.5)
    layer = ConformalIntervals(category_edges(val[1], 0.05, 0.6, 100, grid=EDGES), 4, LEVEL)
    summary = layer.fit(val[0], EDGES, q, val[1], val[2], min_count=100)
    return layer, summary, val, test


def test_category_edges_merge_sparse_top_bins():
    from xpz.model.conformal import category_edges

    z = np.concatenate([np.full(100, 0.02), np.full(100, 0.07), np.full(30, 0.42), np.full(30, 0.57)])
    np.testing.assert_allclose(
        category_edges(z, 0.05, 0.6, 50), [0.0, 0.05, 0.4, 0.6]
    )  # empty bins join below
    np.testing.assert_allclose(category_edges(z, 0.05, 0.6, 100), [0.0, 0.05, 0.6])
    np.testing.assert_allclose(
        category_edges(z, 0.05, 0.6, 120), [0.0, 0.6]
    )  # the lowest joins the one above
    np.testing.assert_allclose(category_edges(z, 0.05, 0.6, 10_000), [0.0, 0.6])


def test_threshold_is_the_finite_sample_quantile():
    from xpz.model.conformal import threshold

    scores = np.arange(1, 101) / 100.0  # n = 100: ceil(101 * 0.68) = 69th smallest
    assert threshold(scores, 0.68) == pytest.approx(0.69)
    assert threshold(scores[:2], 0.68) == 1.0  # ceil(3 * 0.68) = 3 > 2: every z


def test_conformal_covers_every_true_z_bin_and_snr_quartile_where_predicted_z_groups_fail(constructed_fit):
    from xpz.model.conformal import cdf_at
    from xpz.model.posterior import _row_quantiles
    from xpz.model.recalibration import CoverageRecalibration

    layer, summary, val, (cdf, z_true, fluxes) = constructed_fit
    assert summary["conformal_cells"] == (len(layer.z_edges) - 1) * 4
    z = _row_quantiles(cdf, EDGES, 0.5)
    lo, hi = layer.interval(cdf, EDGES, np.full(len(z), 0.5), z, fluxes)
    assert np.all((lo <= z) & (z <= hi))
    # the predicted-z grouped quantile recalibration, fitted on the same validation galaxies
    rec = CoverageRecalibration(np.round(np.arange(1, 10) * 0.05, 10), 4, group_by="median")
    rec.fit(cdf_at(val[0], EDGES, val[1]), _row_quantiles(val[0], EDGES, 0.5), val[2], 100)
    recal = rec.apply(cdf, z, fluxes)
    central = (_row_quantiles(recal, EDGES, 0.5 - LEVEL / 2), _row_quantiles(recal, EDGES, 0.5 + LEVEL / 2))
    cat = layer.category(z_true)
    snr = layer.group(layer.feature(cdf, EDGES, fluxes))
    worst = {}
    for name, (a, b) in (("conformal", (lo, hi)), ("grouped", central)):
        inside = (z_true >= a) & (z_true <= b)
        assert inside.mean() == pytest.approx(LEVEL, abs=0.025)  # both fine overall
        shortfall = [LEVEL - _tolerance(int((m).sum())) - inside[m].mean()
                     for m in [cat == c for c in range(len(layer.z_edges) - 1)] + [snr == s for s in range(4)]
                     if m.sum() >= 150]  # fmt: skip
        worst[name] = max(shortfall)
    assert worst["conformal"] < 0  # >= nominal minus sampling tolerance in every bin and quartile
    assert worst["grouped"] > 0.02  # groups of predicted z miss some bin of true z


def test_interval_is_the_hull_of_the_conformal_set():
    """Against brute force: s(x, z) = |F(z) - q| <= t[bin(z), snr] on a fine grid of z."""
    from xpz.model.conformal import ConformalIntervals, cdf_at
    from xpz.model.posterior import _row_quantiles

    rng = np.random.default_rng(5)
    n = 60
    cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(rng.dirichlet(np.full(120, 0.2), size=n), 1)], 1)
    cdf[:5, 90:] = 1.0  # flat tails, as recalibration makes
    fluxes = np.repeat(rng.uniform(0.5, 2.0, (n, 1)), 186, axis=1)
    layer = ConformalIntervals([0.0, 0.1, 0.2, 0.3, 0.6], 2, LEVEL)
    layer.build((None, 1))
    layer.snr_edges.assign([np.log10(186.0)])
    layer.thresholds.assign([[0.05, 0.3], [0.0, 0.2], [0.25, 0.1], [1.0, 0.02]])
    q = rng.uniform(0.1, 0.9, n)
    z = _row_quantiles(cdf, EDGES, q)
    lo, hi = layer.interval(cdf, EDGES, q, z, fluxes)
    assert np.all((lo <= z) & (z <= hi))
    grid = np.linspace(0.0, 0.6, 24001)
    t = layer.thresholds.numpy()[layer.category(grid)][:, layer.group(layer.feature(cdf, EDGES, fluxes))].T
    f = np.stack([cdf_at(cdf, EDGES, np.full(n, g)) for g in grid], axis=1)
    member = np.abs(f - q[:, None]) <= t + 1e-12
    brute_lo = grid[member.argmax(1)]
    brute_hi = grid[len(grid) - 1 - member[:, ::-1].argmax(1)]
    np.testing.assert_allclose(lo, np.minimum(brute_lo, z), atol=3e-5)
    np.testing.assert_allclose(hi, np.maximum(brute_hi, z), atol=3e-5)


def test_width_groups_hold_coverage_for_galaxies_the_posterior_is_over_confident_about():
    """Two kinds of galaxies at the same S/N: calibrated ones (p(z) width 0.01) and over-confident ones
    (p(z) width 0.025, true errors 0.05), as a galaxy physics the network knows less well. Grouped by
    S/N the shared threshold leaves the second kind under-covered; grouped by the posterior's width
    each kind gets its own threshold and covers 68%."""
    from xpz.model.conformal import ConformalIntervals, category_edges

    def sample(n, seed):
        rng = np.random.default_rng(seed)
        hard = rng.uniform(size=n) < 0.5
        mu = rng.uniform(0.05, 0.35, n)
        width = np.where(hard, 0.025, 0.01)
        centres = 0.5 * (EDGES[1:] + EDGES[:-1])
        p = np.exp(-0.5 * ((centres[None] - mu[:, None]) / width[:, None]) ** 2)
        cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(p / p.sum(1, keepdims=True), 1)], 1)
        z_true = np.clip(mu + rng.normal(0.0, np.where(hard, 0.05, 0.01)), 0.001, 0.599)
        return cdf, z_true, np.ones((n, 186)), hard, mu

    val, test = sample(20000, 3), sample(20000, 4)
    cover = {}
    for group_by in ("snr", "width"):
        layer = ConformalIntervals(
            category_edges(val[1], 0.05, 0.6, 100, grid=EDGES), 4, LEVEL, group_by=group_by
        )
        layer.fit(val[0], EDGES, np.full(len(val[1]), 0.5), val[1], val[2], min_count=100)
        lo, hi = layer.interval(test[0], EDGES, np.full(len(test[1]), 0.5), test[4], test[2])
        inside = (test[1] >= lo) & (test[1] <= hi)
        cover[group_by] = (inside[test[3]].mean(), inside[~test[3]].mean())
    assert cover["snr"][0] < LEVEL - 0.05 and cover["snr"][1] > LEVEL + 0.05  # one threshold for both kinds
    for share in cover["width"]:  # at least the level (less sampling noise); the set's hull adds a little
        assert LEVEL - 0.025 < share < LEVEL + 0.04
    with pytest.raises(ValueError, match="group_by must be one of"):
        ConformalIntervals([0.0, 0.6], 2, LEVEL, group_by="colour")


def test_conformal_thresholds_survive_save_and_load(dataset, tmp_path):
    import keras

    from xpz.config import CoverageConfig
    from xpz.model.conformal import conformal_layer
    from xpz.model.posterior import predict_redshift
    from xpz.model.posthoc import fit_conformal, fit_recalibration

    x, z = flux_matrix(dataset), dataset["z"].to_numpy()
    cfg = CoverageConfig(min_count=20)
    model, _ = fit_recalibration(tiny_keras_model(x[:1000]), x[1000:], z[1000:], cfg)
    model, summary = fit_conformal(model, x[1000:], z[1000:], cfg)
    assert summary["val_coverage_68_conformal"] >= LEVEL - 0.02
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    a, b = conformal_layer(model), conformal_layer(loaded)
    assert b.z_edges == a.z_edges and b.level == a.level and b.group_by == a.group_by == "width"
    np.testing.assert_array_equal(b.thresholds.numpy(), a.thresholds.numpy())
    np.testing.assert_array_equal(b.snr_edges.numpy(), a.snr_edges.numpy())
    before, after = predict_redshift(model, x[:300]), predict_redshift(loaded, x[:300])
    pd.testing.assert_frame_equal(before, after)
    assert ((before["z_lower"] <= before["z"]) & (before["z"] <= before["z_upper"])).all()


def test_recalibration_saved_before_group_by_still_groups_by_the_point_estimate(dataset, tmp_path):
    """A model saved before `group_by` (and without conformal thresholds) loads, keeps grouping by
    the shifted point estimate as it was fitted, and gives the central interval."""
    import keras

    from xpz.model.architectures import posterior_layer
    from xpz.model.passthrough import attach_layer
    from xpz.model.posterior import _cdf, _row_quantiles, point_levels, predict_redshift
    from xpz.model.recalibration import CoverageRecalibration, recalibration_layer

    x = flux_matrix(dataset)[:400]
    base = tiny_keras_model(x)
    posterior_layer(base).set_calibration(shift_z=0.1, shift_gain=0.6)
    layer = CoverageRecalibration([0.1, 0.2], 2, name="recalibration")
    layer.build((None, 1))
    rng = np.random.default_rng(0)
    layer.pit_quantiles.assign(
        np.sort(rng.uniform(size=(3, 2, 101)), axis=-1) ** np.array([1.0, 2.0])[None, :, None]
    )
    model = attach_layer(base, layer)
    path = tmp_path / "old.keras"
    model.save(path)
    with zipfile.ZipFile(path) as zin:  # the file as the old code wrote it: no group_by in the config
        files = {name: zin.read(name) for name in zin.namelist()}
    config = json.loads(files["config.json"])
    recal = [lay for lay in config["config"]["layers"] if lay["class_name"] == "CoverageRecalibration"][0]
    del recal["config"]["group_by"]
    files["config.json"] = json.dumps(config).encode()
    old = tmp_path / "old_layout.keras"
    with zipfile.ZipFile(old, "w") as zout:
        for name, data in files.items():
            zout.writestr(name, data)
    loaded = keras.saving.load_model(old, compile=False)
    assert recalibration_layer(loaded).group_by == "point"
    got = predict_redshift(loaded, x)
    # by hand: groups of the shifted point estimate, central 68% of the remapped CDF around it
    edges = np.asarray(posterior_layer(loaded).edges)
    cdf = _cdf(loaded.predict(x, verbose=0))
    shift = {"shift_z": 0.1, "shift_gain": 0.6}
    remapped = recalibration_layer(loaded).apply(
        cdf, _row_quantiles(cdf, edges, point_levels(cdf, edges, **shift)), x
    )
    q = point_levels(remapped, edges, **shift)
    q_lo = np.clip(q - 0.34, 0.0, 0.32)
    np.testing.assert_allclose(got["z"], _row_quantiles(remapped, edges, q), atol=1e-6)
    np.testing.assert_allclose(got["z_lower"], _row_quantiles(remapped, edges, q_lo), atol=1e-6)
    np.testing.assert_allclose(got["z_upper"], _row_quantiles(remapped, edges, q_lo + 0.68), atol=1e-6)
    median_grouped = CoverageRecalibration([0.1, 0.2], 2, group_by="median")
    assert median_grouped.get_config()["group_by"] == "median"
    with pytest.raises(ValueError, match="group_by"):
        CoverageRecalibration([0.1], 2, group_by="mean")


def test_snr_table_and_coverage_spread_hand_computed():
    from xpz.model.coverage_report import coverage_spread, snr_metrics, snr_table
    from xpz.model.evaluate import bin_edges, bin_table

    fluxes = np.repeat(np.array([1.0, 2.0, 10.0, 20.0])[:, None] / 186.0, 186, axis=1)
    z_true = np.array([0.1, 0.2, 0.3, 0.4])
    z_pred = np.array([0.12, 0.2, 0.25, 0.4])
    lo, hi = z_pred - 0.01, z_pred + 0.01
    table = snr_table(z_true, z_pred, lo, hi, fluxes, groups=2)
    assert list(table["count"]) == [2, 2]
    np.testing.assert_allclose(table["mean_error"], [0.01, -0.025])
    np.testing.assert_allclose(table["coverage_68"], [0.5, 0.5])
    cut = (np.log10(2.0) + 1.0) / 2  # the median of log10 total flux 0, 0.30, 1, 1.30
    np.testing.assert_allclose(table[["log_flux_lo", "log_flux_hi"]].iloc[0], [0.0, cut], atol=1e-12)
    metrics = snr_metrics(table)
    assert metrics["snr_q1/coverage_68"] == 0.5 and metrics["snr_q2/count"] == 2
    no_interval = snr_table(z_true, z_pred, np.full(4, np.nan), np.full(4, np.nan), fluxes, groups=2)
    assert no_interval["coverage_68"].isna().all() and "snr_q1/coverage_68" not in snr_metrics(no_interval)
    z = np.repeat([0.12, 0.17, 0.47], [60, 60, 60])
    bins = bin_table(
        z, z, np.where(z > 0.45, z + 0.005, z - 0.01), z + 0.01, edges=bin_edges(0.05, 0.6)
    )  # only 0.45-0.50 misses
    spread = coverage_spread(bins, table, z_max=0.45, min_count=50)
    assert spread["coverage_68_bin_min"] == spread["coverage_68_bin_max"] == 1.0  # 0.45-0.50 left out
    assert spread["coverage_68_snr_min"] == 0.5
