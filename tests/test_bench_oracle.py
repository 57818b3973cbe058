"""benchmarks/bench_oracle.py and `xpz.data.likelihood.likelihood_view`: the galaxies' fluxes with
their noise covariance, and the Bayesian template fit that measures what the data permit."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import benchmark_module, run_benchmark
from xpz.config import DataConfig, EvaluateConfig
from xpz.data.likelihood import flux_span, likelihood_view, to_span
from xpz.data.synthetic import generate


@pytest.fixture(scope="module")
def cww():
    return DataConfig(n_galaxies=1200, seed=5, families={"cww": 1.0})


def test_the_view_is_the_generated_fluxes_on_the_span_the_sampling_resolves(cww):
    from xpz.data import xp

    view = likelihood_view(cww)
    frame = generate(cww)
    r = sum(span.shape[1] for span in flux_span())
    assert r == 89 and view["data"].shape == (1200, r) and view["covariance"].shape == (1200, r, r)
    np.testing.assert_array_equal(view["z"], frame["z"].to_numpy())
    np.testing.assert_array_equal(view["data"], to_span(frame.iloc[:, 3:].to_numpy(np.float64)))
    # the fluxes of basis coefficients x map to x's components along the resolved directions
    x = np.random.default_rng(0).normal(size=(3, 55))
    for band, span in zip(("bp", "rp"), flux_span(), strict=True):
        u, s, _ = np.linalg.svd(xp.design_matrix(band), full_matrices=False)
        np.testing.assert_allclose((x @ xp.design_matrix(band)) @ span, x @ u[:, s > 1e-6 * s[0]], atol=1e-6)
    clean = likelihood_view(cww.model_copy(update={"noise": 0.0}))
    assert (clean["covariance"] == 0).all()


def test_the_covariance_is_that_of_the_noise_the_generator_adds(cww):
    """Whitened by its own covariance, each galaxy's noise (noisy minus noiseless data) has
    chi^2 / dof = 1 on average: a covariance off by a factor (the noise boost, the transits) fails."""
    noisy, clean = likelihood_view(cww), likelihood_view(cww.model_copy(update={"noise": 0.0}))
    resid = noisy["data"] - clean["data"]
    dof = resid.shape[1]
    chi2 = np.array([r @ np.linalg.solve(c, r) for r, c in zip(resid, noisy["covariance"], strict=True)])
    assert abs(chi2.mean() / dof - 1.0) < 0.03, chi2.mean() / dof
    assert np.all(np.linalg.eigvalsh(noisy["covariance"][:20]) > 0)


def test_the_fit_finds_z_with_the_right_physics_and_not_with_the_wrong_one():
    bench = benchmark_module("bench_oracle")
    cfg = DataConfig(n_galaxies=40, seed=3, families={"cww": 1.0}, noise=0.3)
    view = likelihood_view(cfg)
    right = bench.template_fit(view, bench.build_grid("cww", cfg.z_max, 0.005, 0.1), cfg, progress=False)
    cosmos = bench.build_grid("cosmos", cfg.z_max, 0.005, 0.5)
    wrong = bench.template_fit(view, cosmos, cfg, progress=False)
    before = view["covariance"].copy()
    allowing = bench.template_fit(view, cosmos, cfg, template_error=0.15, progress=False)
    np.testing.assert_array_equal(view["covariance"], before)  # the allowance is the fit's, not the data's
    width = lambda p: (p["z_upper"] - p["z_lower"]).mean()  # noqa: E731
    assert width(allowing) > 1.5 * width(wrong)
    err_right = np.abs(right["z"].to_numpy() - view["z"])
    assert np.median(err_right) < 0.006 and err_right.mean() < 0.015, err_right
    assert (right["z_lower"] <= right["z"]).all() and (right["z"] <= right["z_upper"]).all()
    assert np.abs(wrong["z"].to_numpy() - view["z"]).mean() > 2 * err_right.mean()


def test_bad_options_are_one_message_and_exit_2(tmp_path):
    for args, needle in (
        (("--n", "5"), "at least 20"),
        (("--dz", "0.5"), "--dz"),
        (("--family", "kcorrect"), "invalid choice"),
        (("--template-error", "2"), "--template-error must be in"),
    ):
        done = run_benchmark("bench_oracle", *args, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_scores_use_the_evaluations_definitions():
    """The table's cells come from bench_families.score (one definition of MAE, sigma_NMAD, coverage)."""
    import pandas as pd

    families = benchmark_module("bench_families")
    z = np.linspace(0.01, 0.5, 200)
    pred = pd.DataFrame(
        {"z": z + 0.01, "z_lower": z - 0.02, "z_upper": z + 0.05, "ood_score": np.nan, "eligible": True}
    )
    sc = families.score(pd.DataFrame({"z": z}), pred, EvaluateConfig())
    assert sc["mae"] == pytest.approx(0.01) and sc["coverage_68"] == 1.0 and np.isnan(sc["flagged"])
