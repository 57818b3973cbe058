"""The eligibility's per-term cuts (`xpz.model.ood`): quantiles of validation terms whose union keeps a
chosen share of the validation galaxies. numpy only; imports no xpz module."""

from __future__ import annotations

import numpy as np


def union_cuts(
    terms: np.ndarray, keep: float, iterations: int = 50, flagged: np.ndarray | None = None
) -> np.ndarray:
    """Per-column cuts theta_k = the (1 - eps) quantile of each column of `terms` (n, K), with eps
    found by bisection so that the share of rows under every cut is `keep` (as close as the data
    allow from above). `flagged` (n,) bool: rows another rule (the star cut) already flags; they
    count against `keep` (eps is 0, each cut the column's maximum, when they alone exceed 1 - keep).
    Raises ValueError for an empty `terms`."""
    if len(terms) == 0:
        raise ValueError("union_cuts: no finite validation terms to fit the cuts on")
    ordered = np.sort(terms, axis=0)
    free = np.ones(len(terms), bool) if flagged is None else ~np.asarray(flagged, bool)

    def quantiles(eps: float) -> np.ndarray:
        return np.array([np.quantile(ordered[:, k], 1.0 - eps) for k in range(terms.shape[1])])

    lo, hi = 0.0, 1.0 - keep
    for _ in range(iterations):
        eps = 0.5 * (lo + hi)
        inside = np.mean(free & (terms <= quantiles(eps)).all(axis=1))
        lo, hi = (eps, hi) if inside >= keep else (lo, eps)
    return quantiles(lo)
