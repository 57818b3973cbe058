"""Eligibility (OOD score + flag), p(z) in qp's format, the field's PDF metrics, per-group coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xpz.spectra import FLUX_COLUMNS, flux_matrix
from xpz_models import tiny_keras_model


@pytest.fixture(scope="module")
def impostors():
    from xpz.config import DataConfig
    from xpz.data.impostors import generate_impostors

    return generate_impostors(40, DataConfig(), seed=3)


def test_impostors_one_block_per_kind(impostors):
    from xpz.data.impostors import KINDS

    assert list(impostors["kind"].value_counts().reindex(KINDS)) == [40] * len(KINDS)
    x = flux_matrix(impostors)
    assert np.isfinite(x).all()
    zeroed = x[(impostors["kind"] == "band_zeroed").to_numpy()]
    assert ((zeroed[:, :80] == 0).all(axis=1) | (zeroed[:, 80:] == 0).all(axis=1)).all()


@pytest.fixture(scope="module")
def fitted(dataset):
    """A tiny model with an eligibility layer fitted on 1,000 galaxies, threshold on 500 others."""
    from xpz.config import EligibilityConfig
    from xpz.model.ood import fit_eligibility

    x = flux_matrix(dataset)
    model = tiny_keras_model(x[:1000])
    cfg = EligibilityConfig(components=8, mixture=2, max_fit_samples=None, keep=0.99, star_components=20,
                            star_hidden=(32,), star_max_samples=3000, star_impostors_per_kind=50)  # fmt: skip
    wrapped, summary = fit_eligibility(model, x[:1000], x[1000:], cfg)
    return model, wrapped, summary, x


def test_flag_keeps_galaxies_and_rejects_non_galaxies(fitted, impostors):
    from xpz.model.posterior import predict_redshift

    model, wrapped, summary, x = fitted
    assert summary["ood_val_eligible"] == pytest.approx(0.99, abs=0.005)
    gal = predict_redshift(wrapped, x[1000:])
    assert gal["eligible"].mean() >= 0.98
    # the redshift columns are untouched by the pass-through layer
    np.testing.assert_allclose(gal["z"], predict_redshift(model, x[1000:])["z"], atol=1e-9)
    out = predict_redshift(wrapped, flux_matrix(impostors))
    flagged = 1 - out.groupby(impostors["kind"].to_numpy())["eligible"].mean()
    assert flagged["noise"] == 1.0
    assert flagged["band_zeroed"] >= 0.9
    # a bright blackbody far outside the galaxies' flux and shape, a non-finite and an all-zero spectrum
    from xpz.data.impostors import blackbody, observed_wavelengths
    from xpz.data.sed import instrument

    star = blackbody(np.array([4000.0]), observed_wavelengths()) @ instrument().sed_to_flux
    star = star * (1e5 / star.sum())
    odd = np.vstack([star, np.full((1, 186), np.nan), np.zeros((1, 186))]).astype(np.float32)
    res = predict_redshift(wrapped, np.nan_to_num(odd[:1]))
    assert not res["eligible"].iloc[0]
    scores = wrapped.get_layer("eligibility").score(odd)
    assert np.isinf(scores[1:]).all()


def test_fast_score_equals_the_reference_score(fitted, impostors):
    """`fast_score` (the prediction paths' evaluation) gives `OodDensity.score`, +inf at the same rows
    (non-finite, all-zero, negative total), whatever the row blocks, for float32 and float64 input;
    `predict_redshift`'s ood_score and eligible are the reference's. The residual, density and star
    terms agree to 1e-10 relative; the template term to the float32 rounding of its matrix products,
    which BLAS rounds differently for another row block or thread count (fast_score runs on one):
    up to ~2e-3 relative measured, as its chi^2 is a difference of two large sums."""
    from xpz.model.ood_fast import _fast_terms, fast_score
    from xpz.model.posterior import predict_redshift

    _, wrapped, _, x = fitted
    layer = wrapped.get_layer("eligibility")
    odd = np.vstack([np.full((1, 186), np.nan), np.zeros((1, 186)), -x[:1], np.full((1, 186), np.inf),
                     x[:1] * 1e4, np.where(np.arange(186) == 5, np.nan, x[1])])  # fmt: skip
    fluxes = np.vstack([x[1000:], flux_matrix(impostors), odd]).astype(np.float32)
    reference = layer.score(fluxes)
    finite = np.isfinite(reference)
    assert finite.sum() > 500 and (~finite).sum() >= 5 and np.ptp(reference[finite]) > 10
    terms, valid = layer.terms(fluxes)
    for block, data in ((2048, fluxes), (7, fluxes), (100, fluxes.astype(np.float64))):
        fast = fast_score(layer, data, block=block)
        assert fast.shape == reference.shape
        np.testing.assert_array_equal(np.isinf(fast), ~finite)
        np.testing.assert_allclose(fast[finite], reference[finite], rtol=2e-3, atol=2e-3)  # scores cross 0
        fast_terms, _ = _fast_terms(layer, data, block)
        np.testing.assert_allclose(
            fast_terms[valid][:, [0, 1, 3]], terms[valid][:, [0, 1, 3]], rtol=1e-10, atol=1e-9
        )
        np.testing.assert_allclose(fast_terms[valid, 2], terms[valid, 2], rtol=5e-3)
    pred = predict_redshift(wrapped, x[1000:])
    np.testing.assert_allclose(pred["ood_score"], layer.score(x[1000:]), rtol=2e-3, atol=2e-3)
    # the cuts are order statistics of these very validation rows: a row sitting on a cut scores 0 to
    # rounding in either evaluation, so compare the flag away from it
    ref = layer.score(x[1000:])
    away = np.abs(ref) > 1e-2
    assert away.mean() > 0.95
    np.testing.assert_array_equal(pred["eligible"].to_numpy()[away], layer.eligible(ref)[away])


def test_threshold_and_recalibration_saved_with_the_model(fitted, tmp_path, dataset):
    import keras

    from xpz.config import CoverageConfig
    from xpz.model.posterior import predict_redshift
    from xpz.model.posthoc import fit_recalibration
    from xpz.model.recalibration import recalibration_layer

    _, wrapped, summary, x = fitted
    z = dataset["z"].to_numpy()
    model, fit = fit_recalibration(wrapped, x[1000:], z[1000:], CoverageConfig(min_count=20))
    assert fit["val_coverage_68_recalibrated"] == pytest.approx(0.68, abs=0.05)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert float(loaded.get_layer("eligibility").threshold.numpy()) == pytest.approx(summary["ood_threshold"])
    np.testing.assert_array_equal(recalibration_layer(loaded).pit_quantiles.numpy(),
                                  recalibration_layer(model).pit_quantiles.numpy())  # fmt: skip
    a, b = predict_redshift(model, x[:300]), predict_redshift(loaded, x[:300])
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_recalibration_sees_validation_only(smoke_config, dataset):
    """Training with a test split of NaN fluxes gives the same recalibration, conformal thresholds and
    eligibility threshold as with the real test split: test data never reaches the fit."""
    from xpz.data.split import split_dataset
    from xpz.model.conformal import conformal_layer
    from xpz.model.evaluate import summary_metrics
    from xpz.model.ood import ood_layer
    from xpz.model.posterior import predict_redshift
    from xpz.model.recalibration import recalibration_layer
    from xpz.model.train import train_model

    cfg = smoke_config.model_copy(
        update={
            "train": smoke_config.train.model_copy(
                update={"members": 1, "epochs": 1, "verbose": 0, "max_seconds": None}
            )
        }
    )
    splits = split_dataset(dataset, cfg.split)
    poisoned = splits.test.copy()
    poisoned[list(FLUX_COLUMNS)] = np.nan
    poisoned["z"] = -1.0
    results = []
    for test in (splits.test, poisoned):
        s = (
            type(splits)(splits.train, splits.val, test, splits.digests)
            if hasattr(splits, "digests")
            else splits
        )
        results.append(train_model(s, cfg))
    tables = [recalibration_layer(r.model).pit_quantiles.numpy() for r in results]
    assert np.isfinite(tables[0]).all()
    np.testing.assert_allclose(tables[0], tables[1], atol=1e-6)
    # the conformal thresholds (xpz.model.conformal) too
    conformal = [conformal_layer(r.model) for r in results]
    assert conformal[0].z_edges == conformal[1].z_edges
    np.testing.assert_allclose(conformal[0].thresholds.numpy(), conformal[1].thresholds.numpy(), atol=1e-9)
    # the shift and the metrics reported are those of the served estimator (recalibrated CDF, conformal interval)
    pred = predict_redshift(results[0].model, flux_matrix(splits.val))
    z_val = splits.val["z"].to_numpy(
        np.float32
    )  # as training reads it: the threshold-setting galaxies sit on the bounds
    m, _ = summary_metrics("", z_val, pred["z"], pred["z_lower"], pred["z_upper"], cfg.evaluate)
    for key in ("mae", "worst_bin_bias", "coverage_68"):
        assert results[0].calibration[f"val_{key}"] == pytest.approx(m[key], rel=1e-6), key
    assert m["coverage_68"] >= 0.67
    assert float(ood_layer(results[0].model).threshold.numpy()) == pytest.approx(
        float(ood_layer(results[1].model).threshold.numpy()), rel=1e-6
    )


def test_crps_and_point_metrics_equal_textbook_values():
    from xpz.model.pdf_metrics import crps, point_metrics_ez

    edges = np.linspace(0.0, 1.0, 11)
    uniform = np.linspace(0.0, 1.0, 11)[None, :]  # U(0, 1)
    # CRPS of U(0,1) at y: y^3/3 + (1-y)^3/3; at 0.5: 1/12; a point outside: distance + 1/3 - ...
    np.testing.assert_allclose(crps(edges, np.repeat(uniform, 3, 0), np.array([0.5, 0.25, 0.0])),
                               [1 / 12, (0.25**3 + 0.75**3) / 3, 1 / 3], rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(crps(edges, uniform, np.array([1.5])), [0.5 + 1 / 3], rtol=1e-12)
    # ez on hand-built predictions: z_true 0, ez = dz
    zt = np.zeros(10)
    zp = np.array([-0.02, -0.01, 0.0, 0.0, 0.01, 0.01, 0.02, 0.03, 0.2, -0.3])
    m = point_metrics_ez(zt, zp)
    assert m["ez_bias"] == pytest.approx(zp.mean())
    assert m["ez_bias_median"] == pytest.approx(np.median(zp))
    assert m["ez_outlier_rate_0.15"] == pytest.approx(0.2)
    q75, q25 = np.percentile(zp, [75, 25])
    assert m["ez_sigma_iqr"] == pytest.approx((q75 - q25) / 1.349)
    assert m["ez_sigma_nmad"] == pytest.approx(1.4826 * np.median(np.abs(zp - np.median(zp))), rel=1e-3)
    cut = max(0.06, 3 * (q75 - q25) / 1.349)
    assert m["ez_outlier_rate_3sigma_iqr"] == pytest.approx(np.mean(np.abs(zp) > cut))


def test_pit_of_calibrated_pdfs_is_uniform():
    """Galaxies whose true z is drawn from their own p(z) give a flat PIT: KS small, p-value large."""
    from xpz.model.pdf_metrics import pit_metrics, qp_ensemble

    rng = np.random.default_rng(0)
    edges = np.linspace(0.0, 1.0, 21)
    n = 2000
    p = rng.gamma(2.0, size=(n, 20))
    cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(p / p.sum(1, keepdims=True), 1)], 1)
    u = rng.uniform(size=n)
    z_true = np.array([np.interp(u[i], cdf[i], edges) for i in range(n)])
    pit, m = pit_metrics(qp_ensemble(edges, cdf), z_true)
    np.testing.assert_allclose(pit, u, atol=1e-6)
    assert m["pit_ks"] < 0.04 and m["pit_ks_pvalue"] > 0.01


def test_qp_file_round_trips_in_chunks(tmp_path):
    import qp

    from xpz.model.pdf_metrics import write_pdfs
    from xpz.model.posterior import redshifts_from_output

    rng = np.random.default_rng(1)
    edges = np.linspace(0.0, 0.6, 121)
    p = rng.dirichlet(np.full(120, 0.3), size=250)
    z, lo, hi = redshifts_from_output(p, edges)
    cdf = np.concatenate([np.zeros((250, 1)), np.cumsum(p, 1)], 1)
    ancil = {"source_id": np.arange(250, dtype=np.int64) + 7, "z": z, "z_lower": lo, "z_upper": hi}
    path = write_pdfs(tmp_path / "pz.hdf5", edges, cdf, ancil, chunk=64)
    ens = qp.read(str(path))
    assert ens.npdf == 250
    np.testing.assert_array_equal(ens.ancil["source_id"], ancil["source_id"])
    np.testing.assert_allclose(ens.median().ravel(), z, atol=1e-6)
    np.testing.assert_allclose(ens.cdf(edges), cdf, atol=1e-9)


def test_predict_file_carries_the_flag_and_writes_pdfs(fitted, impostors, dataset, tmp_path):
    """`xpz predict` (and the Dask flow, which calls the same `predict_file`) with a model carrying
    the eligibility layer: the flag per row, and --pdf's qp file in the same order, medians = z."""
    import qp
    from typer.testing import CliRunner

    from xpz.cli import app
    from xpz.data.io import write_dataset

    _, wrapped, _, x = fitted
    model_path = tmp_path / "model.keras"
    wrapped.save(model_path)
    rows = pd.concat([dataset.iloc[1000:1300], impostors[impostors["kind"] == "noise"].assign(z=0.1)])
    rows = rows[["source_id", "z", *FLUX_COLUMNS]].reset_index(drop=True)
    rows["source_id"] = np.arange(len(rows), dtype=np.int64) + 100
    src = write_dataset(rows, tmp_path / "in.parquet")
    out, pdf = tmp_path / "pred.parquet", tmp_path / "pz.hdf5"
    result = CliRunner().invoke(app, ["predict", str(src), "--model", str(model_path), "--out", str(out),
                                      "--pdf", str(pdf), "--chunk-size", "128", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    pred = pd.read_parquet(out)
    assert pred["eligible"].iloc[:300].mean() >= 0.97
    assert not pred["eligible"].iloc[300:].any()
    # pure-noise impostors whose total flux is <= 0 have no spectrum to answer for: z NaN, a reason, no p(z)
    predicted = pred["reject_reason"].isna().to_numpy()
    assert predicted[:300].all()
    assert (rows.loc[~predicted, list(FLUX_COLUMNS)].sum(axis=1) <= 0).all()
    assert pred.loc[~predicted, "z"].isna().all()
    ens = qp.read(str(pdf))
    assert ens.npdf == predicted.sum()
    np.testing.assert_array_equal(ens.ancil["source_id"], pred["source_id"][predicted])
    np.testing.assert_array_equal(ens.ancil["eligible"], pred["eligible"][predicted])
    np.testing.assert_allclose(ens.median().ravel(), pred["z"][predicted], atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*"))


def test_real_gaia_stars_are_not_eligible(fitted, repo_root):
    from xpz.data.io import read_gaia_xp_continuous
    from xpz.model.posterior import predict_redshift

    stars = read_gaia_xp_continuous(repo_root / "tests" / "fixtures" / "gaia_dr3_xp_continuous_stars.csv")
    assert len(stars) == 2
    out = predict_redshift(fitted[1], flux_matrix(stars))
    assert not out["eligible"].any()
    assert np.isfinite(out["ood_score"]).all()


def test_template_chi2_equals_the_brute_force_fit():
    """min_j min_{A>0} sum (x - A t_j)^2 / var, against a direct evaluation on a grid of amplitudes
    refined in closed form, with one spectrum that only a negative amplitude would fit (A = 0 then)."""
    from xpz.model.ood_terms import template_chi2

    rng = np.random.default_rng(1)
    t = rng.uniform(0.5, 2.0, size=(7, 186))
    x = np.vstack([3.0 * t[2] + rng.normal(0, 0.1, 186), -2.0 * t[0], rng.uniform(0, 5, 186)])
    var = rng.uniform(0.5, 2.0, size=x.shape)
    expected = []
    for xi, vi in zip(x, var):
        best = np.sum(xi**2 / vi)  # A = 0
        for tj in t:
            a = max(np.sum(xi * tj / vi) / np.sum(tj**2 / vi), 0.0)
            best = min(best, np.sum((xi - a * tj) ** 2 / vi))
        expected.append(best)
    # float32 products: the error is float32 rounding of the total sum w x^2, not of the (small) residual
    scale = np.sum(x**2 / var, axis=1)
    assert (np.abs(template_chi2(x, var, t) - expected) <= 1e-6 * scale + 1e-6 * np.abs(expected)).all()
    assert template_chi2(x, var, t)[1] == pytest.approx(np.sum(x[1] ** 2 / var[1]), rel=1e-5)


def test_union_cuts_keep_the_share_and_cut_each_term():
    from xpz.model.cuts import union_cuts

    rng = np.random.default_rng(2)
    terms = rng.normal(size=(20000, 3))
    cuts = union_cuts(terms, 0.99)
    inside = (terms <= cuts).all(axis=1)
    assert inside.mean() == pytest.approx(0.99, abs=0.0006)
    # three independent terms share the 1% flagged: each cut sits near its own 99.67% quantile
    np.testing.assert_allclose(cuts, np.quantile(terms, 1 - 0.01 / 3, axis=0), atol=0.08)
    with pytest.raises(ValueError, match="no finite"):
        union_cuts(np.empty((0, 3)), 0.99)
    # rows another rule already flags count against keep: the terms take only what is left
    flagged = rng.uniform(size=len(terms)) < 0.004
    cuts = union_cuts(terms, 0.99, flagged=flagged)
    assert np.mean(~flagged & (terms <= cuts).all(axis=1)) == pytest.approx(0.99, abs=0.0006)
    np.testing.assert_allclose(cuts, np.quantile(terms, 1 - 0.006 / 3, axis=0), atol=0.08)
    # when they alone flag more than 1 - keep, every cut is the column's maximum
    np.testing.assert_array_equal(union_cuts(terms, 0.99, flagged=rng.uniform(size=len(terms)) < 0.02),
                                  terms.max(axis=0))  # fmt: skip


def test_a_two_term_layer_saved_before_the_template_term_still_scores(fitted):
    """Models registered before the template term hold 10 eligibility weights: they load, flag as
    before (residual + density against their stored threshold), and say so (`legacy`)."""
    from xpz.model.ood import OodDensity

    _, wrapped, _, x = fitted
    new = wrapped.get_layer("eligibility")
    old = OodDensity(new.components, new.mixture)
    old.build((None, 1))
    store = {str(i): w.numpy() for i, w in enumerate(new.weights[:10])}
    store["7"] = np.asarray(5.0)  # an old threshold on the two-term sum
    old.load_own_variables(store)
    assert old.legacy and "ood_cut_template" not in old.summary()
    terms, _ = new.terms(x[:200])
    np.testing.assert_allclose(old.score(x[:200]), terms[:, 0] + terms[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(old.eligible(old.score(x[:200])), terms[:, 0] + terms[:, 1] <= 5.0)
