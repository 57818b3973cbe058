"""The per-spectrum arithmetic of the eligibility terms (`xpz.model.ood`): which rows are usable, their
unit-sum fluxes and total flux, and the best fit by one of a set of templates with a free amplitude
(the template term; `xpz.model.ood_fast` evaluates it blockwise for the prediction paths)."""

from __future__ import annotations

import numpy as np

_TEMPLATE_BLOCK = 4096  # rows per block of the template fit (bounds the (rows, templates) temporaries)


def flux_features(fluxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x float64, unit-sum fluxes f, total flux s, valid): rows with a non-finite flux or s <= 0 are
    invalid (their f is 0 and s is 1)."""
    x = np.asarray(fluxes, dtype=np.float64)
    total = x.sum(axis=1)
    valid = np.isfinite(x).all(axis=1) & np.isfinite(total) & (total > 0)
    s = np.where(valid, total, 1.0)
    x = np.where(valid[:, None], x, 0.0)
    return x, x / s[:, None], s, valid


def template_chi2(x: np.ndarray, var: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """(n,) min over templates t_j (m, 186) of min_{A > 0} sum_i (x_i - A t_ji)^2 / var_i, for fluxes
    x and noise variances var (n, 186). With w = 1/var: chi2_j = sum w x^2 - (sum w x t_j)^2 / sum w t_j^2
    when the best amplitude is positive, else sum w x^2 (A = 0). float32 matrix products in blocks."""
    t = np.asarray(templates, dtype=np.float32)
    t2 = t * t
    out = np.empty(len(x))
    for i in range(0, len(x), _TEMPLATE_BLOCK):
        w = (1.0 / var[i : i + _TEMPLATE_BLOCK]).astype(np.float32)
        wx = w * x[i : i + _TEMPLATE_BLOCK].astype(np.float32)
        base = np.einsum("ij,ij->i", wx, x[i : i + _TEMPLATE_BLOCK], dtype=np.float64)
        a = wx @ t.T  # (rows, m) sum w x t_j
        b = w @ t2.T  # (rows, m) sum w t_j^2 > 0
        np.sqrt(b, out=b)
        np.divide(a, b, out=a)  # the gain a^2 / b is monotone in a / sqrt(b) where a > 0
        best = np.maximum(a.max(axis=1), 0.0).astype(np.float64)
        out[i : i + _TEMPLATE_BLOCK] = np.maximum(base - best * best, 0.0)
    return out
