"""The synthetic Gaia XP galaxy generator: statistics, determinism, schema, physics (real files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xpz.config import DataConfig
from xpz.data import sed, synthetic
from xpz.spectra import DATASET_COLUMNS, FLUX_COLUMNS, N_BP, flux_matrix


@pytest.fixture(scope="module")
def dataset() -> pd.DataFrame:
    """4,000 spectra at the default (calibrated) setting, in uneven chunks."""
    return synthetic.generate(DataConfig(n_galaxies=4000, seed=42, chunk_size=1500))


def test_redshift_statistics_match_the_seed():
    z = synthetic.draw_redshifts(DataConfig(n_galaxies=50_000, seed=3))
    assert z.shape == (50_000,)
    assert z.min() > 0 and z.max() <= 0.6
    assert abs(z.mean() - 0.142) < 0.003
    assert abs(np.median(z) - 0.126) < 0.004
    assert abs(z.std() - 0.079) < 0.003
    assert abs(stats.skew(z) - 1.094) < 0.12
    assert 0.34 < np.percentile(z, 99) < 0.41


def test_z_max_is_respected():
    z = synthetic.draw_redshifts(DataConfig(n_galaxies=5000, seed=1, z_max=0.25))
    assert z.min() > 0 and z.max() <= 0.25


def test_draw_redshifts_matches_generate(dataset):
    z = synthetic.draw_redshifts(DataConfig(n_galaxies=4000, seed=42))
    np.testing.assert_array_equal(z, dataset["z"].to_numpy())


def test_schema(dataset):
    assert tuple(dataset.columns) == synthetic.SYNTHETIC_COLUMNS
    assert tuple(c for c in dataset.columns if c != "family") == DATASET_COLUMNS
    assert set(dataset["family"].astype(str)) == {"kcorrect", "bagpipes", "cosmos"}
    assert len(dataset) == 4000
    assert dataset["source_id"].dtype == np.int64 and dataset["source_id"].is_unique
    assert (dataset["source_id"] > 0).all()
    assert dataset["z"].dtype == np.float64
    assert (dataset[list(FLUX_COLUMNS)].dtypes == np.float32).all()
    assert np.isfinite(flux_matrix(dataset)).all()


def test_chunks_have_the_requested_size():
    sizes = [
        len(c) for c in synthetic.generate_chunks(DataConfig(n_galaxies=2300, chunk_size=900), progress=False)
    ]
    assert sizes == [900, 900, 500]


def test_deterministic_and_seed_dependent(dataset):
    again = synthetic.generate(DataConfig(n_galaxies=4000, seed=42, chunk_size=4000))
    pd.testing.assert_frame_equal(again, dataset)  # also: independent of chunk_size
    other = synthetic.generate(DataConfig(n_galaxies=1000, seed=43))
    assert not np.array_equal(other["z"].to_numpy(), dataset["z"].to_numpy()[:1000])
    assert not np.array_equal(flux_matrix(other), flux_matrix(dataset)[:1000])
    assert not set(other["source_id"]) & set(dataset["source_id"].iloc[:1000])


def test_rows_do_not_depend_on_chunk_size_or_n():
    a = pd.concat(
        synthetic.generate_chunks(DataConfig(n_galaxies=2500, seed=9, chunk_size=700), progress=False),
        ignore_index=True,
    )
    b = synthetic.generate(DataConfig(n_galaxies=1300, seed=9, chunk_size=1300))
    pd.testing.assert_frame_equal(a.iloc[:1300], b)


def test_flux_scale_like_the_seed(dataset):
    """Seed Table 1: blue end ~0.1-0.6 (negative for faint sources), red end ~2-13."""
    f = flux_matrix(dataset)
    assert 0.05 < np.median(f[:, 0]) < 1.5
    assert 1.5 < np.median(f[:, -1]) < 15.0
    assert 0.01 < (f[:, 0] < 0).mean() < 0.5  # negatives occur at the blue end
    assert (f[:, -1] > 0).mean() > 0.99


def test_bp_rp_junction_dip(dataset):
    mean = flux_matrix(dataset).mean(axis=0)
    last_bp, first_rp = mean[N_BP - 1], mean[N_BP]
    assert first_rp < 0.7 * last_bp
    assert first_rp < mean[N_BP + 10]  # RP rises again after the junction


def test_mean_flux_falls_with_redshift(dataset):
    f, z = flux_matrix(dataset), dataset["z"].to_numpy()
    means = [f[(z >= lo) & (z < lo + 0.1)].mean() for lo in (0.0, 0.1, 0.2, 0.3)]
    assert all(a > b for a, b in zip(means, means[1:])), means


def test_noise_parameter_increases_scatter():
    base = DataConfig(n_galaxies=1000, seed=5)
    clean = flux_matrix(synthetic.generate(base.model_copy(update={"noise": 0.0})))
    one = flux_matrix(synthetic.generate(base))
    two = flux_matrix(synthetic.generate(base.model_copy(update={"noise": 2.0})))
    s1, s2 = np.std(one - clean), np.std(two - clean)
    assert 0 < s1 < s2
    assert s2 == pytest.approx(2 * s1, rel=1e-3)  # same noise realisation, scaled
    # noiseless spectra are non-negative but for the ringing of the XP bases next to the strongest
    # emission lines (a few galaxies in 10,000 dip below -5% of their peak; real XP spectra ring too)
    assert (clean.min(axis=1) > -0.1 * clean.max(axis=1)).all()
    assert np.mean(clean.min(axis=1) < -0.05) < 0.005


def test_noise_sets_task_difficulty():
    """kNN on unit-sum fluxes: noiseless is far easier than the calibrated default."""
    from sklearn.neighbors import KNeighborsRegressor

    def knn_mae(noise: float) -> float:
        df = synthetic.generate(DataConfig(n_galaxies=4000, seed=11, noise=noise))
        x = flux_matrix(df).astype(float)
        x /= x.sum(axis=1, keepdims=True)
        z = df["z"].to_numpy()
        pred = KNeighborsRegressor(10).fit(x[:3000], z[:3000]).predict(x[3000:])
        return float(np.abs(pred - z[3000:]).mean())

    noisy, clean = knn_mae(1.0), knn_mae(0.0)
    assert 0.015 < noisy < 0.045
    assert clean < 0.5 * noisy


def test_g_magnitude_matches_speclite():
    import astropy.units as u
    import speclite.filters

    cfg = DataConfig(n_galaxies=1000, seed=2)
    z = synthetic._draw_z(synthetic._rng(cfg.seed, 0, 0), 200, cfg.z_max)
    sed, g = synthetic._block_physics(cfg, 0, 200, z)
    assert (g >= cfg.g_min).all() and (g <= cfg.g_max).all()
    mod = synthetic.instrument()
    lam_nm = np.exp(mod.ln_obs0 + synthetic.LNL_STEP * np.arange(mod.n_obs))
    flux = sed * 100.0 * u.erg / (u.s * u.cm**2 * u.AA)  # 1 W m^-2 nm^-1 = 100 erg s^-1 cm^-2 A^-1
    g_ab = np.asarray(speclite.filters.load_filter("gaiadr3-G").get_ab_magnitude(flux, lam_nm * 10 * u.AA))
    np.testing.assert_allclose(g_ab + synthetic.G_AB_TO_VEGA, g, atol=0.01)


def test_distance_modulus_is_planck18():
    from astropy.cosmology import Planck18

    z = np.linspace(0.001, 0.7, 200)
    np.testing.assert_allclose(sed.distance_modulus(z), Planck18.distmod(z).value, atol=0.003)
