"""Fast evaluation of the eligibility score (`xpz.model.ood.OodDensity.score`) for the prediction
paths (`xpz.model.posterior`): the same terms blockwise, in place, on one BLAS thread."""

from __future__ import annotations

import numpy as np

from xpz.model.ood import TERMS, OodDensity
from xpz.model.ood_terms import template_chi2
from xpz.model.star_term import star_logit
from xpz.spectra import N_FLUX


def fast_score(layer: OodDensity, fluxes: np.ndarray, block: int = 2048) -> np.ndarray:
    """`layer.score(fluxes)` evaluated faster: the same terms in float64 (the template products in
    float32, as in `template_chi2`), rearranged, for the prediction paths (`xpz.model.posterior`);
    fitting and reports keep `OodDensity.score`.

    Same result (rounding only: ~1e-10 relative for the residual, density and star terms; the template
    term's float32 products round differently with another row block or BLAS thread count, up to
    ~1e-3 relative): r = x - s (mean + u W) equals s (f - mean - u W),
    u = (x W^T) / s - mean W^T equals (f - mean) W^T; the mixture's components in one matrix product
    instead of a loop. Rows in blocks of `block`, every (block, 186) step in place (cache-sized,
    no full-size float64 temporaries), the skinny matrix products on one BLAS thread (they are
    memory-bound; a second thread only adds synchronisation, badly so on a shared CPU).
    (n,) scores; +inf for unusable spectra, as `score`."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return layer.combine(*_fast_terms(layer, np.asarray(fluxes), block))


def _fast_terms(layer: OodDensity, x_all: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) terms and validity as `OodDensity.terms`, blockwise (see `fast_score`)."""
    mean, axes = layer._v("mean"), layer._v("axes")
    noise_a, noise_b = layer._v("noise_a"), layer._v("noise_b")
    log_w, mix_means, chols = layer._v("mix_log_weights"), layer._v("mix_means"), layer._v("mix_prec_chol")
    templates = None if layer.legacy else layer._v("templates")
    star = layer.star_parameters() if layer.has_star else None
    k, (m, d) = layer.components, mix_means.shape
    mean_u = mean @ axes.T
    chol_cols = chols.transpose(1, 0, 2).reshape(d, m * d)  # y @ chol_j for every j at once
    shift = np.einsum("md,mde->me", mix_means, chols).reshape(m * d)
    const = (
        log_w - 0.5 * d * np.log(2 * np.pi) + np.log(np.abs(np.diagonal(chols, axis1=1, axis2=2))).sum(axis=1)
    )
    out = np.full((len(x_all), len(TERMS)), np.nan)
    valid_all = np.empty(len(x_all), dtype=bool)
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
        var = np.maximum(x, 0.0)  # -> the noise variance a + b max(x, 0), in place
        var *= noise_b
        var += noise_a
        np.square(r, out=r)
        r /= var
        rows = slice(start, start + len(x))
        out[rows, 0] = r.sum(axis=1) / (N_FLUX - k)
        t = np.concatenate([u, np.log10(s)[:, None]], axis=1) @ chol_cols - shift
        logs = const - 0.5 * np.square(t).reshape(len(t), m, d).sum(axis=2)
        top = logs.max(axis=1)
        out[rows, 1] = -(top + np.log(np.exp(logs - top[:, None]).sum(axis=1))) / (k + 1)
        if templates is not None:
            out[rows, 2] = template_chi2(x, var, templates) / (N_FLUX - 1)
        if star is not None:
            out[rows, 3] = star_logit(star, x, s)
        valid_all[rows] = valid
    return out, valid_all
