"""Eligibility: an out-of-distribution score for every spectrum, and a threshold chosen on validation.

The score knows the training galaxies through two density terms, fitted on the training split:

    unit-sum fluxes f = x / s (s = sum(x), the total flux), principal axes W of the training f:
    u = W (f - mu)  (the first `components` coordinates) and the residual r = s (f - mu - W^T u)
    (in flux units: what the galaxy subspace does not describe);

    chi2   = sum_i r_i^2 / (a_i + b_i max(x_i, 0))   the residual against the instrument's noise,
             with a per-pixel variance a_i + b_i x_i (background + Poisson-like) fitted by least
             squares to the training residuals (so a clean bright spectrum that galaxies cannot
             describe scores high, a faint noisy galaxy does not);
    nll    = -log GMM(u, log10 s)   a Gaussian mixture (`mixture` components, full covariance) of
             the subspace coordinates and the log total flux (shape and brightness of galaxies);

    score  = chi2 / (186 - components) + nll / (components + 1)      (each per degree of freedom).

A spectrum with any non-finite flux or a total flux <= 0 scores +inf. The threshold is the `keep`
quantile (e.g. 99%) of the validation scores: `eligible = score <= threshold` keeps that share of
galaxies like those the model was trained on. (Principal-component subspace plus residual: the
probabilistic-PCA picture of Tipping & Bishop 1999; mixture: scikit-learn's GaussianMixture.)

All of it lives in the `OodDensity` Keras layer (its weights: the density model and the threshold),
applied as a pass-through to the model's output, so a saved `.keras` file (and the MLflow model
that wraps it) carries the eligibility rule: `xpz.model.posterior.predict_redshift` reads it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from xpz.spectra import N_FLUX


def flux_features(fluxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x float64, unit-sum fluxes f, total flux s, valid): rows with a non-finite flux or s <= 0 are
    invalid (their f is 0 and s is 1)."""
    x = np.asarray(fluxes, dtype=np.float64)
    total = x.sum(axis=1)
    valid = np.isfinite(x).all(axis=1) & np.isfinite(total) & (total > 0)
    s = np.where(valid, total, 1.0)
    x = np.where(valid[:, None], x, 0.0)
    return x, x / s[:, None], s, valid


@keras.saving.register_keras_serializable(package="xpz")
class OodDensity(keras.layers.Layer):
    """Pass-through layer holding the density model of the training galaxies and the threshold.

    `score(fluxes)` gives the out-of-distribution score (higher = less like the training set),
    `eligible(scores)` the flag. `call` returns its input unchanged."""

    def __init__(self, components: int = 8, mixture: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.components, self.mixture = int(components), int(mixture)

    def build(self, input_shape):
        k, m, d = self.components, self.mixture, N_FLUX

        def weight(name, shape, init="zeros"):
            return self.add_weight(name=name, shape=shape, initializer=init, trainable=False, dtype="float64")

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

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "components": self.components, "mixture": self.mixture}

    # ------------------------------------------------------------------ numpy side
    def _v(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name).numpy(), dtype=np.float64)

    def _terms(self, fluxes: np.ndarray):
        x, f, s, valid = flux_features(fluxes)
        mean, axes = self._v("mean"), self._v("axes")
        u = (f - mean) @ axes.T
        r = s[:, None] * (f - mean - u @ axes)
        var = self._v("noise_a") + self._v("noise_b") * np.clip(x, 0.0, None)
        return u, r, var, np.log10(s), valid

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

    def score(self, fluxes: np.ndarray) -> np.ndarray:
        """(n,) out-of-distribution scores of raw (n, 186) fluxes (+inf for unusable spectra)."""
        u, r, var, log_s, valid = self._terms(fluxes)
        chi2 = np.sum(r**2 / var, axis=1)
        nll = self._mixture_nll(np.concatenate([u, log_s[:, None]], axis=1))
        k = self.components
        out = chi2 / (N_FLUX - k) + nll / (k + 1)
        out[~valid | ~np.isfinite(out)] = np.inf
        return out

    def eligible(self, scores: np.ndarray) -> np.ndarray:
        """Boolean flags: score at or below the threshold (always False for +inf / NaN)."""
        s = np.asarray(scores, dtype=np.float64)
        return np.isfinite(s) & (s <= float(self.threshold.numpy()))

    def summary(self) -> dict[str, float]:
        return {"ood_threshold": float(self.threshold.numpy()), "ood_keep": float(self.keep.numpy())}

    def fit(self, train_fluxes: np.ndarray, val_fluxes: np.ndarray, keep: float, seed: int = 0) -> dict[str, float]:
        """Fit the density model on training fluxes, the threshold (the `keep` quantile of the
        validation scores) on validation fluxes. Returns the threshold and its validation share."""
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        if not self.built:
            self.build((None, 1))
        x, f, s, valid = flux_features(train_fluxes)
        x, f, s = x[valid], f[valid], s[valid]
        if len(f) < max(self.components + 2, self.mixture) * 4:
            raise ValueError(f"OodDensity.fit: {len(f)} valid training spectra are too few")
        pca = PCA(n_components=self.components, random_state=seed).fit(f)
        self.mean.assign(pca.mean_)
        self.axes.assign(pca.components_)
        self.noise_a.assign(np.ones(N_FLUX))
        self.noise_b.assign(np.zeros(N_FLUX))
        u, r, _, log_s, _ = self._terms(x)
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
        val_scores = self.score(val_fluxes)
        threshold = float(np.quantile(val_scores[np.isfinite(val_scores)], keep))
        self.threshold.assign(threshold)
        self.keep.assign(float(keep))
        self.fitted.assign(1.0)
        return {**self.summary(), "ood_val_eligible": float(np.mean(self.eligible(val_scores)))}


# ---------------------------------------------------------------- fast evaluation of OodDensity.score
def fast_score(layer: OodDensity, fluxes: np.ndarray, block: int = 2048) -> np.ndarray:
    """`layer.score(fluxes)` evaluated faster: the same formula in float64, rearranged, for the
    prediction paths (`xpz.model.posterior`); fitting and reports keep `OodDensity.score`.

    Same result to ~1e-12 relative (rounding only): r = x - s (mean + u W) equals s (f - mean - u W),
    u = (x W^T) / s - mean W^T equals (f - mean) W^T; the mixture's components in one matrix product
    instead of a loop. Rows in blocks of `block`, every (block, 186) step in place (cache-sized,
    no full-size float64 temporaries), the skinny matrix products on one BLAS thread (they are
    memory-bound; a second thread only adds synchronisation, badly so on a shared CPU).
    (n,) scores; +inf for unusable spectra, as `score`."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fast_score(layer, np.asarray(fluxes), block)


def _fast_score(layer: OodDensity, x_all: np.ndarray, block: int) -> np.ndarray:
    mean, axes = layer._v("mean"), layer._v("axes")
    noise_a, noise_b = layer._v("noise_a"), layer._v("noise_b")
    log_w, mix_means, chols = layer._v("mix_log_weights"), layer._v("mix_means"), layer._v("mix_prec_chol")
    k, (m, d) = layer.components, mix_means.shape
    mean_u = mean @ axes.T
    chol_cols = chols.transpose(1, 0, 2).reshape(d, m * d)  # y @ chol_j for every j at once
    shift = np.einsum("md,mde->me", mix_means, chols).reshape(m * d)
    const = log_w - 0.5 * d * np.log(2 * np.pi) + np.log(np.abs(np.diagonal(chols, axis1=1, axis2=2))).sum(axis=1)
    out = np.empty(len(x_all))
    for start in range(0, len(x_all), block):
        x = np.array(x_all[start : start + block], dtype=np.float64)  # a copy: worked on in place
        s = x.sum(axis=1)  # finite iff every flux is
        valid = np.isfinite(s) & (s > 0)
        if not valid.all():
            x[~valid], s[~valid] = 0.0, 1.0
        u = (x @ axes.T) / s[:, None] - mean_u
        r = u @ axes  # -> s (mean + u W) - x = -r of `score`, in place
        r += mean
        r *= s[:, None]
        r -= x
        np.maximum(x, 0.0, out=x)  # -> the noise variance a + b max(x, 0), in place
        x *= noise_b
        x += noise_a
        np.square(r, out=r)
        r /= x
        chi2 = r.sum(axis=1)
        t = np.concatenate([u, np.log10(s)[:, None]], axis=1) @ chol_cols - shift
        logs = const - 0.5 * np.square(t).reshape(len(t), m, d).sum(axis=2)
        top = logs.max(axis=1)
        nll = -(top + np.log(np.exp(logs - top[:, None]).sum(axis=1)))
        score = chi2 / (N_FLUX - k) + nll / (k + 1)
        score[~valid | ~np.isfinite(score)] = np.inf
        out[start : start + block] = score
    return out


def ood_layer(model: keras.Model) -> OodDensity | None:
    """The model's fitted `OodDensity` layer, or None (a model saved before eligibility existed)."""
    for layer in reversed(model.layers):
        if isinstance(layer, OodDensity) and float(layer.fitted.numpy()) > 0:
            return layer
    return None


def attach_layer(model: keras.Model, layer: keras.layers.Layer, name: str | None = None) -> keras.Model:
    """A model computing the same output with `layer` applied last as a pass-through (so the layer
    and its weights are saved with the model); compiled like `model` when it was compiled."""
    from xpz.model.architectures import RedshiftMAE, posterior_layer

    wrapped = keras.Model(model.inputs, layer(model.outputs[0]), name=name or model.name)
    loss = getattr(model, "loss", None)
    if loss is not None:
        head = posterior_layer(model)
        centres = None if head is None else [0.5 * (a + b) for a, b in zip(head.edges[:-1], head.edges[1:])]
        wrapped.compile(loss=loss, metrics=[RedshiftMAE(centres=centres)])
    return wrapped


def fit_eligibility(model: keras.Model, train_fluxes, val_fluxes, cfg: Any) -> tuple[keras.Model, dict[str, float]]:
    """Fit an `OodDensity` (settings `cfg`: an `EligibilityConfig`) on a subsample of the training
    fluxes and its threshold on validation, and return the model carrying it with the fit summary."""
    rng = np.random.default_rng(cfg.seed)
    x = np.asarray(train_fluxes)
    if cfg.max_fit_samples and len(x) > cfg.max_fit_samples:
        x = x[np.sort(rng.choice(len(x), cfg.max_fit_samples, replace=False))]
    layer = OodDensity(cfg.components, cfg.mixture, name="eligibility")
    summary = layer.fit(x, val_fluxes, cfg.keep, seed=cfg.seed)
    return attach_layer(model, layer), summary


def ood_report(layer: OodDensity, galaxy_fluxes, impostors) -> tuple[dict[str, float], Any]:
    """Flag rates of test galaxies and of non-galaxies (`xpz.data.impostors`: DataFrame with `kind`
    and the flux columns), and the purity/completeness curve over thresholds (figure).

    Metrics: `ood/galaxies_flagged`, `ood/<kind>_flagged`, `ood/nongalaxies_flagged`, and at the
    stored threshold the purity of the eligible set (equal numbers of galaxies and non-galaxies)."""
    from matplotlib.figure import Figure

    from xpz.spectra import flux_matrix

    s_gal = layer.score(galaxy_fluxes)
    s_imp = layer.score(flux_matrix(impostors))
    kinds = impostors["kind"].to_numpy()
    flag_gal, flag_imp = ~layer.eligible(s_gal), ~layer.eligible(s_imp)
    metrics = {"ood/galaxies_flagged": float(flag_gal.mean()), "ood/nongalaxies_flagged": float(flag_imp.mean())}
    for kind in dict.fromkeys(kinds):
        metrics[f"ood/{kind}_flagged"] = float(flag_imp[kinds == kind].mean())
    # purity / completeness of the eligible set as the threshold moves (non-galaxies reweighted to
    # as many as the galaxies)
    finite = np.concatenate([s_gal, s_imp])
    grid = np.quantile(finite[np.isfinite(finite)], np.linspace(0.0, 1.0, 201))
    w = len(s_gal) / max(len(s_imp), 1)
    completeness = np.array([np.mean(s_gal <= t) for t in grid])
    contamination = np.array([w * np.sum(s_imp <= t) for t in grid])
    kept = completeness * len(s_gal)
    purity = np.where(kept + contamination > 0, kept / np.maximum(kept + contamination, 1e-12), 1.0)
    threshold = float(layer.threshold.numpy())
    at = (float(np.mean(~flag_gal)), float((~flag_gal).sum() / max((~flag_gal).sum() + w * (~flag_imp).sum(), 1e-12)))
    metrics["ood/completeness"], metrics["ood/purity"] = at
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(completeness, purity, "-", label="threshold scan")
    ax.plot(*at, "o", color="C3", label=f"stored threshold {threshold:.0f} (keep {float(layer.keep.numpy()):.0%})")
    ax.set_xlabel("completeness: share of test galaxies eligible")
    ax.set_ylabel("purity: galaxies among the eligible (1:1 mix)")
    ax.set_title("Eligibility flag: purity vs completeness")
    ax.legend()
    return metrics, fig
