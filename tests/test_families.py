"""Independent galaxy families (issue 18): the bagpipes SED library, the COSMOS and CWW template sets,
the mixture, the family column through io / validation / split, and the per-family evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xpz.config import DataConfig, SplitConfig
from xpz.data import empirical, sps, synthetic
from xpz.data.io import read_dataset, write_dataset
from xpz.data.split import split_dataset
from xpz.errors import InputError
from xpz.spectra import FAMILY_COLUMN, flux_matrix


@pytest.fixture(scope="module")
def mixture() -> pd.DataFrame:
    return synthetic.generate(DataConfig(n_galaxies=6000, seed=11, chunk_size=2500))


def test_library_is_complete_and_physical():
    lib = sps.load_library()
    n = lib.stellar.shape[0]
    assert lib.stellar.shape == lib.nebular.shape == (n, sps.rest_wavelengths().size)
    assert n == sps.LIBRARY_SIZE
    assert np.isfinite(lib.stellar).all() and (lib.stellar >= 0).all() and (lib.nebular >= 0).all()
    lam = sps.rest_wavelengths()
    opt = (lam > 400) & (lam < 700)
    np.testing.assert_allclose((lib.stellar + lib.nebular)[:, opt].mean(axis=1), 1.0, rtol=1e-4)
    # star-forming entries carry H-alpha in emission, quiescent ones (almost) none
    ha = np.abs(lam - 656.3).argmin()
    assert np.median(lib.nebular[~lib.quiescent, ha]) > 20 * np.median(lib.nebular[lib.quiescent, ha]) + 1e-6
    assert 0.15 < lib.quiescent.mean() < 0.5
    # quiescent galaxies are old: their 400 nm break is deeper (ratio of flux above / below 400 nm)
    red = lib.stellar[:, (lam > 405) & (lam < 425)].mean(1) / lib.stellar[:, (lam > 375) & (lam < 395)].mean(
        1
    )
    assert np.median(red[lib.quiescent]) > np.median(red[~lib.quiescent]) + 0.2


def test_empirical_templates_are_the_rail_sets_on_the_rest_grid():
    sets = empirical.load_templates()
    lam = sps.rest_wavelengths()
    opt = (lam > 400) & (lam < 700)
    for family, names in empirical.SEQUENCES.items():
        s = sets[family]
        assert s.names == names and s.flux.shape == (len(names), lam.size)
        assert np.isfinite(s.flux).all() and (s.flux >= 0).all()
        np.testing.assert_allclose(s.flux[:, opt].mean(axis=1), 1.0, rtol=1e-4)
    assert (len(sets["cosmos"].names), len(sets["cww"].names)) == (31, 6)
    with np.load(empirical.TEMPLATES_PATH) as f:  # provenance: the source and a sha256 per file
        assert "pz-rail-base" in str(f["source"]) and len(f["sha256"]) == 37
    # red galaxies take the old end of the sequence: a deeper 400 nm break than the young end's
    brk = lambda t: t[:, (lam > 405) & (lam < 425)].mean(1) / t[:, (lam > 375) & (lam < 395)].mean(1)  # noqa: E731
    for family in empirical.SEQUENCES:
        b = brk(sets[family].flux)
        red_end = b[: int(np.ceil(empirical.RED_RANGE[family][1])) + 1]
        assert red_end.max() > 1.6 and b[-1] < 1.0 and np.median(red_end) > np.median(b) + 0.2, family


def test_template_rebuild_from_sed_files_and_its_errors(tmp_path, capsys):
    """`python -m xpz.data.empirical` reads RAIL .sed files (Angstrom, f_lambda) onto the rest grid;
    a missing file is one message and exit 2."""
    wave = np.linspace(500.0, 30000.0, 3000)
    for k, name in enumerate(n for names in empirical.SEQUENCES.values() for n in names):
        np.savetxt(tmp_path / f"{name}.sed", np.c_[wave, (wave / 5500.0) ** (-(k % 5) / 2.0)])
    out = tmp_path / "t.npz"
    assert empirical.main(["--sed-dir", str(tmp_path), "--out", str(out)]) == 0
    sets = empirical.load_templates.__wrapped__(out)
    lam = sps.rest_wavelengths()
    opt = (lam > 400) & (lam < 700)
    power = (lam / 550.0) ** -1.0  # k = 2: a power law of index -1, normalised as the module does
    np.testing.assert_allclose(sets["cosmos"].flux[2], power / power[opt].mean(), rtol=2e-3)
    (tmp_path / "Ell1_A_0.sed").write_text("wavelength flux\n")
    assert empirical.main(["--sed-dir", str(tmp_path), "--out", str(tmp_path / "u.npz")]) == 2
    assert "Ell1_A_0.sed: not two numeric columns" in capsys.readouterr().err
    np.savetxt(tmp_path / "Ell1_A_0.sed", np.c_[wave, np.ones_like(wave)])
    (tmp_path / "SB2_B2004a.sed").unlink()
    assert empirical.main(["--sed-dir", str(tmp_path), "--out", str(tmp_path / "u.npz")]) == 2
    err = capsys.readouterr().err
    assert "SB2_B2004a.sed: missing" in err and "Traceback" not in err
    assert not (tmp_path / "u.npz").exists()


def test_template_galaxies_interpolate_along_the_sequence():
    s = empirical.load_templates()["cww"]
    cols = np.tile(np.arange(100, 110), (3, 1))
    got = s.at(np.array([1.0, 1.5, 5.0]), cols, np.zeros((3, 1)))
    np.testing.assert_allclose(got[0], s.flux[1, 100:110], rtol=1e-6)
    np.testing.assert_allclose(got[1], 0.5 * (s.flux[1, 100:110] + s.flux[2, 100:110]), rtol=1e-6)
    np.testing.assert_allclose(got[2], s.flux[5, 100:110], rtol=1e-6)
    u = np.linspace(0, 0.999, 50)
    red = empirical.draw_positions("cosmos", np.ones(50, bool), u)
    blue = empirical.draw_positions("cosmos", np.zeros(50, bool), u)
    assert red.min() >= 0 and red.max() <= 8 and blue.min() >= 8 and blue.max() <= 30
    held = synthetic.generate(DataConfig(n_galaxies=1000, seed=5, families={"cww": 1.0}))
    assert set(held[FAMILY_COLUMN].astype(str)) == {"cww"} and np.isfinite(flux_matrix(held)).all()


@pytest.mark.slow
def test_library_rebuild_reproduces_the_committed_file():
    """The committed .npz is what `python -m xpz.data.sps` computes (first entries, one per SFH kind)."""
    pytest.importorskip("bagpipes")
    lib = sps.load_library()
    params = sps.draw_parameters(sps.LIBRARY_SIZE)
    kinds = [p["_meta"][4] for p in params]
    first = sorted({kinds.index(k) for k in set(kinds)})
    assert len(first) == len(sps.SFH_KINDS)
    rebuilt = sps.build_library(max(first) + 1, progress=False)
    for i in first:
        np.testing.assert_allclose(rebuilt.stellar[i], lib.stellar[i], rtol=2e-5, atol=1e-8)
        np.testing.assert_allclose(rebuilt.nebular[i], lib.nebular[i], rtol=2e-5, atol=1e-8)
        assert rebuilt.log_ssfr[i] == pytest.approx(lib.log_ssfr[i])


def test_age_of_universe_is_planck18():
    from astropy.cosmology import Planck18

    z = np.array([0.0, 0.1, 0.3, 0.6, 2.0])
    np.testing.assert_allclose(sps.age_of_universe_gyr(z), Planck18.age(z).value, rtol=0.005)


def test_entries_fit_in_the_age_of_the_universe():
    lib = sps.load_library()
    rng = np.random.default_rng(0)
    z = rng.uniform(0.0, 0.6, 20_000)
    red = rng.uniform(size=z.size) < 0.4
    entry = synthetic._sps_entries(lib, red, z, rng.uniform(size=z.size))
    assert (lib.age_gyr[entry] <= sps.age_of_universe_gyr(z)).all()
    assert (lib.quiescent[entry] == red).all()
    # at high z the oldest entries are out of reach; at low z they are drawn
    assert lib.age_gyr[entry[z > 0.5]].max() < sps.age_of_universe_gyr(0.5)
    assert lib.age_gyr[entry[z < 0.05]].max() > 12.0


def test_mixture_has_the_training_families_in_their_shares(mixture):
    family = mixture[FAMILY_COLUMN].astype(str)
    assert set(family) == {"kcorrect", "bagpipes", "cosmos"}  # cww is held out: never in the default
    for name in ("kcorrect", "bagpipes", "cosmos"):
        assert abs((family == name).mean() - 1 / 3) < 0.03, name
    only = synthetic.generate(DataConfig(n_galaxies=1000, seed=11, families={"kcorrect": 1.0}))
    assert set(only[FAMILY_COLUMN].astype(str)) == {"kcorrect"}
    # a kcorrect galaxy is the same whatever the shares: row i depends on (seed, i) only
    same = (mixture[FAMILY_COLUMN].astype(str) == "kcorrect").to_numpy()[:1000]
    np.testing.assert_array_equal(flux_matrix(only)[same], flux_matrix(mixture)[:1000][same])


def test_families_are_different_galaxies(mixture):
    """Same z and G distributions, different spectra: a colour index differs between the families."""
    from scipy import stats

    x = flux_matrix(mixture).astype(float)
    s = x.sum(1)
    low = mixture["z"].to_numpy() < 0.15
    blue_red = x[:, 10:40].sum(1) / x[:, 120:160].sum(1)
    fam = mixture[FAMILY_COLUMN].astype(str).to_numpy()
    a, b = blue_red[low & (fam == "kcorrect")], blue_red[low & (fam == "bagpipes")]
    assert stats.ks_2samp(a, b).pvalue < 1e-3
    assert stats.ks_2samp(a, blue_red[low & (fam == "cosmos")]).pvalue < 1e-3
    # ... but brightness and redshift are drawn alike
    assert stats.ks_2samp(s[fam == "kcorrect"], s[fam == "bagpipes"]).pvalue > 1e-4
    assert stats.ks_2samp(mixture["z"][fam == "kcorrect"], mixture["z"][fam == "bagpipes"]).pvalue > 1e-3


def test_families_config_is_validated():
    with pytest.raises(ValueError, match="unknown or no family"):
        DataConfig(families={"sdss": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        DataConfig(families={"kcorrect": 0.0, "bagpipes": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        DataConfig(families={"kcorrect": -1.0, "bagpipes": 2.0})


def test_family_survives_parquet_and_bad_values_are_named(mixture, tmp_path):
    path = write_dataset(mixture.head(200), tmp_path / "d.parquet")
    back = read_dataset(path)
    assert list(back.columns[:3]) == ["source_id", "z", FAMILY_COLUMN]
    assert (back[FAMILY_COLUMN] == mixture[FAMILY_COLUMN].astype(str).head(200)).all()
    bad = mixture.head(50).copy()
    bad[FAMILY_COLUMN] = bad[FAMILY_COLUMN].astype(str)
    bad.loc[[3, 7], FAMILY_COLUMN] = ""
    with pytest.raises(InputError, match=r"column 'family' is empty in rows 3, 7"):
        write_dataset(bad, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


@pytest.mark.slow
def test_validation_rejects_an_unknown_family(mixture):
    from xpz.config import ValidateConfig
    from xpz.data.validation import validate_frame

    cfg = ValidateConfig(min_rows=100)
    assert validate_frame(mixture, cfg).success
    bad = mixture.copy()
    bad[FAMILY_COLUMN] = bad[FAMILY_COLUMN].astype(str)
    bad.loc[5, FAMILY_COLUMN] = "sdss"
    result = validate_frame(bad, cfg)
    assert not result.success
    assert any(FAMILY_COLUMN == f.column for f in result.failures)


def test_split_is_stratified_on_family_and_z(mixture):
    splits = split_dataset(mixture, SplitConfig(seed=3))
    for name in ("train", "val", "test"):
        part = splits[name]
        share = (part[FAMILY_COLUMN].astype(str) == "bagpipes").mean()
        whole = (mixture[FAMILY_COLUMN].astype(str) == "bagpipes").mean()
        assert abs(share - whole) < 0.01, name
    # within a family, each split keeps its z distribution
    for fam in ("kcorrect", "bagpipes", "cosmos"):
        z_all = mixture.loc[mixture[FAMILY_COLUMN].astype(str) == fam, "z"]
        z_test = splits.test.loc[splits.test[FAMILY_COLUMN].astype(str) == fam, "z"]
        assert abs(np.median(z_test) - np.median(z_all)) < 0.01


def test_per_family_metrics_are_those_of_each_family(mixture):
    from xpz.config import EvaluateConfig
    from xpz.model.evaluate import per_family

    test = mixture.head(3000).reset_index(drop=True)
    rng = np.random.default_rng(1)
    z = test["z"].to_numpy()
    fam = test[FAMILY_COLUMN].astype(str).to_numpy()
    pred_z = z + np.where(fam == "bagpipes", 0.05, 0.0) + rng.normal(0, 0.01, z.size)
    predictions = pd.DataFrame(
        {
            "z_true": z,
            "z": pred_z,
            "z_lower": pred_z - 0.02,
            "z_upper": pred_z + 0.02,
            "eligible": fam == "kcorrect",
        }  # fmt: skip
    )
    metrics, tables = per_family(test, predictions, EvaluateConfig())
    bp = fam == "bagpipes"
    assert metrics["test_mae_bagpipes"] == pytest.approx(np.abs(pred_z - z)[bp].mean())
    kc = fam == "kcorrect"
    assert metrics["test_mae_kcorrect"] == pytest.approx(np.abs(pred_z - z)[kc].mean())
    assert metrics["test_flagged_bagpipes"] == 1.0 and metrics["test_flagged_kcorrect"] == 0.0
    assert metrics["test_low_z_bias_bagpipes"] == pytest.approx(0.05, abs=0.002)
    assert metrics["test_n_bagpipes"] == bp.sum()
    assert set(tables) == {"kcorrect", "bagpipes", "cosmos"}
    assert int(tables["bagpipes"]["count"].sum()) == bp.sum()
    assert per_family(test.drop(columns=FAMILY_COLUMN), predictions, EvaluateConfig()) == ({}, {})


def test_low_z_shift_lowers_the_point_estimate_of_low_z_posteriors():
    from xpz.model.posterior import point_levels

    edges = np.linspace(0.0, 0.6, 121)
    centres = 0.5 * (edges[1:] + edges[:-1])
    probs = np.stack([np.exp(-0.5 * ((centres - m) / 0.02) ** 2) for m in (0.03, 0.3)])
    probs /= probs.sum(1, keepdims=True)
    cdf = np.concatenate([np.zeros((2, 1)), np.cumsum(probs, 1)], axis=1)
    base = point_levels(cdf, edges, 0.35, 0.0)
    shifted = point_levels(cdf, edges, 0.35, 0.0, low_z=0.1, low_gain=0.3)
    assert shifted[0] == pytest.approx(0.5 - 0.3, abs=1e-3)  # all its mass is below 0.1
    assert shifted[1] == pytest.approx(base[1])  # a galaxy surely above 0.1 keeps its median


def test_posterior_layers_of_older_models_load_without_a_low_z_shift():
    from xpz.model.architectures import RedshiftPosterior

    layer = RedshiftPosterior(np.linspace(0, 0.6, 121))
    layer.build((None, 120))
    store = {"0": np.full(120, -1.0, np.float32), "1": np.float32(0.25), "2": np.float32(0.7),
             "3": np.float32(0.35), "4": np.float32(0.6)}  # fmt: skip
    layer.load_own_variables(store)
    assert layer.point_estimate() == pytest.approx(
        {"shift_z": 0.35, "shift_gain": 0.6, "low_z": 0.0, "low_gain": 0.0}
    )
    assert float(layer.temperature.numpy()) == pytest.approx(0.7)


def test_library_builder_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    assert sps.main(["--n", "0"]) == 2
    assert sps.main(["--n", "1", "--out", str(tmp_path / "missing" / "lib.npz")]) == 2
    err = capsys.readouterr().err
    assert "--n must be positive" in err and "does not exist" in err
    assert not (tmp_path / "missing").exists()


def test_low_z_bias_counted_is_the_worst_familys():
    """choose_shift weighs the low-z mean error of the worst family, not the mixture's (+0.01 on one
    family, -0.002 on two others: +0.01 is counted, sign kept); families with < 20 low-z galaxies are
    left out."""
    from xpz.model.calibration import low_z_bias

    fam = np.repeat(["kcorrect", "bagpipes", "cosmos", "rare"], [100, 100, 100, 10])
    error = np.select([fam == "cosmos", fam == "rare"], [0.01, -0.5], -0.002)
    low = np.ones(fam.size, bool)
    low[:50] = False  # kcorrect keeps 50 low-z galaxies
    assert low_z_bias(error, low) == pytest.approx(error[low].mean())
    assert low_z_bias(error, low, fam) == pytest.approx(0.01)  # "rare" (10 galaxies) does not count
    assert low_z_bias(-error, low, fam) == pytest.approx(-0.01)  # the sign is kept
    assert np.isnan(low_z_bias(error, np.zeros(fam.size, bool), fam))
    sparse = np.zeros(fam.size, bool)
    sparse[-10:] = True  # only "rare" is low: no family counts, so the pooled mean does
    assert low_z_bias(error, sparse, fam) == pytest.approx(-0.5)
    assert np.isnan(low_z_bias(error, np.zeros(fam.size, bool)))


@pytest.mark.slow  # trains a small network: > 5 s
def test_training_chooses_the_low_z_shift_on_the_worst_family(mixture):
    """train_model hands the validation families to choose_shift: the logged val_low_z_bias is the
    worst family's low-z mean error of the served estimate, not the mixture's."""
    from xpz.config import config_from_dict
    from xpz.model.calibration import low_z_bias
    from xpz.model.posterior import predict_redshift
    from xpz.model.train import train_model

    splits = split_dataset(mixture, SplitConfig())
    cfg = config_from_dict({
        "model": {"default": {"conv_filters": [8, 8], "conv_kernels": [5, 3], "dense_units": [32]}},
        "train": {"epochs": 3, "batch_size": 128, "verbose": 0},
        "eligibility": {"enabled": False},
    })  # fmt: skip
    result = train_model(splits, cfg)
    val = splits.val
    z = val["z"].to_numpy()
    error = predict_redshift(result.model, flux_matrix(val))["z"].to_numpy() - z
    family = val[FAMILY_COLUMN].astype(str).to_numpy()
    worst = low_z_bias(error, z < 0.1, family)
    assert result.calibration["val_low_z_bias"] == pytest.approx(worst, abs=1e-5)
    per_family = [error[(z < 0.1) & (family == f)].mean() for f in np.unique(family)]
    assert abs(worst) == pytest.approx(max(abs(b) for b in per_family), abs=1e-5)
    assert abs(worst) > abs(error[z < 0.1].mean()) + 1e-4  # so the pooled value would differ
