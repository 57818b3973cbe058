"""The eligibility's per-term cuts (`xpz.model.ood`): quantiles of validation terms whose union keeps a
chosen share of the validation galaxies. numpy only; imports no xpz module."""

from __future__ import annotations

import numpy as np


def union_cuts(terms: np.ndarray, keep: float, iterations: int = 50, weights=None) -> np.ndarray:
    """Per-column cuts theta_k = the (1 - eps w_k) quantile of each column of `terms` (n, K), with eps
    found by bisection so that the share of rows under every cut is `keep` (as close as the data
    allow from above); `weights` w_k (default all 1, scaled to a largest of 1) give a term a larger
    share of the rows cut. Raises ValueError for an empty `terms`."""
    if len(terms) == 0:
        raise ValueError("union_cuts: no finite validation terms to fit the cuts on")
    w = np.ones(terms.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.max()
    ordered = np.sort(terms, axis=0)

    def quantiles(eps: float) -> np.ndarray:
        return np.array([np.quantile(ordered[:, k], 1.0 - eps * w[k]) for k in range(len(w))])

    lo, hi = 0.0, 1.0 - keep
    for _ in range(iterations):
        eps = 0.5 * (lo + hi)
        inside = np.mean((terms <= quantiles(eps)).all(axis=1))
        lo, hi = (eps, hi) if inside >= keep else (lo, eps)
    return quantiles(lo)
