"""68% intervals that cover in every bin of true z and every quartile of the posterior's width:
label-conditional (Mondrian) split-conformal prediction sets on the recalibrated p(z).

Nonconformity of a candidate redshift z for a galaxy x (Vovk, Gammerman & Shafer 2005,
"Algorithmic Learning in a Random World", ch. 4, Mondrian conformal predictors):

    s(x, z) = |F'(z | x) - q(x)|

with F' the model's (recalibrated, `xpz.model.recalibration`) posterior CDF and q(x) the quantile
level of the served point estimate (`xpz.model.posterior.point_levels`), so s = 0 at the point
estimate and grows with the posterior mass between it and z. Categories: bins of the *true* z of
width `bin_width` (the evaluation's bins; the sparse top bins merged until each holds `min_count`
validation galaxies) x quartiles of a group feature g(x), `group_by`:

    width   the width of the recalibrated posterior's central 68% (z at CDF 0.84 - z at 0.16): the
            model's own uncertainty. Galaxies it is over-confident about share a group and get a
            wider set; this holds coverage for each galaxy family (docs/method.md: grouped by S/N
            instead, the cosmos family covered 0.647 and its worst bin 0.597, by width 0.673 / 0.648)
    snr     the log total flux (S/N, as the recalibration's groups): models saved before `group_by`.

On the validation split (never test) each cell (b, s) gets the threshold

    t[b, s] = the ceil((n + 1) * level)-th smallest score of its n galaxies   (1 where that is > n)

(cells below `min_count` use their bin pooled over S/N), and the prediction set of x is

    C(x) = {z : s(x, z) <= t[bin(z), snr(x)]}.

For exchangeable data P(z_true in C(x) | bin(z_true) = b, g-group(x) = s) >= level in every cell
(the class-conditional guarantee of Sadinle, Lei & Wasserman 2019, JASA 114, 223), hence also in
every bin and every group. F' is linear within each model bin, so C(x) is exact: per model
bin j (inside category b) it is {z in bin j : q - t_b <= F'(z) <= q + t_b}. The served interval
[z_lower, z_upper] is the hull of C(x); it always contains the point estimate (s = 0 there).

So `z_lower` / `z_upper` are this conformal set's bounds, not the central quantiles of p(z); the p(z)
itself (qp PDFs, PIT, CRPS) stays the recalibrated CDF. Stored as weights of the pass-through
`ConformalIntervals` layer, so a saved model carries them; a model without it keeps the central
interval of p(z).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from xpz.model.head import _row_quantiles, cdf_at  # cdf_at re-exported: it lived here
from xpz.model.passthrough import PassThrough
from xpz.model.recalibration import log_total_flux


def category_edges(z_true: np.ndarray, width: float, z_max: float, min_count: int, grid=None) -> np.ndarray:
    """Edges [0, width, ..., z_max] of the true-z categories, bins with fewer than `min_count` of
    `z_true` merged into their lower neighbour from the top down (the lowest into the one above);
    snapped to `grid` (the model's bin edges) so each category is a union of model bins."""
    n = round(z_max / width)
    edges = np.round(np.linspace(0.0, n * width, n + 1), 10)
    if grid is not None:
        grid = np.asarray(grid, dtype=np.float64)
        edges = np.unique(grid[np.abs(grid[None, :] - edges[:, None]).argmin(axis=1)])
    counts, _ = np.histogram(np.clip(z_true, edges[0], edges[-1]), bins=edges)
    keep = [edges[-1]]  # upper edges of the categories, from the top
    pending = 0
    for b in range(len(counts) - 1, -1, -1):
        pending += counts[b]
        if pending >= min_count and b > 0:
            keep.append(edges[b])
            pending = 0
    if pending and len(keep) > 1 and pending < min_count:
        keep.pop()  # the lowest category is too small: merge it into the one above
    return np.array(sorted({edges[0], *keep}))


def threshold(scores: np.ndarray, level: float) -> float:
    """The ceil((n + 1) * level)-th smallest score (1.0, i.e. every z, when that exceeds n)."""
    n = len(scores)
    k = math.ceil((n + 1) * level)
    return 1.0 if k > n or n == 0 else float(np.partition(scores, k - 1)[k - 1])


@keras.saving.register_keras_serializable(package="xpz")
class ConformalIntervals(PassThrough):
    """Pass-through layer holding the per-cell thresholds t[b, s] (see module doc)."""

    GROUP_BY = ("snr", "width")

    def __init__(self, z_edges, snr_groups: int = 4, level: float = 0.68, group_by: str = "snr", **kwargs):
        super().__init__(**kwargs)
        if group_by not in self.GROUP_BY:
            raise ValueError(f"ConformalIntervals: group_by must be one of {self.GROUP_BY}, not {group_by!r}")
        self.z_edges = [float(e) for e in z_edges]  # all edges of the true-z categories
        self.snr_groups = int(snr_groups)  # groups of the feature (named when S/N was the only one)
        self.level = float(level)
        self.group_by = group_by  # "snr" in models saved before it existed

    def build(self, input_shape):
        nb, ns = len(self.z_edges) - 1, self.snr_groups
        self.snr_edges = self.add_weight(name="snr_edges", shape=(max(ns - 1, 1),), initializer="zeros",
                                         trainable=False, dtype="float64")  # fmt: skip
        self.thresholds = self.add_weight(name="thresholds", shape=(nb, ns), initializer="ones",
                                          trainable=False, dtype="float64")  # fmt: skip

    def get_config(self):
        return {
            **super().get_config(),
            "z_edges": self.z_edges,
            "snr_groups": self.snr_groups,
            "level": self.level,
            "group_by": self.group_by,
        }

    def feature(self, cdf: np.ndarray, edges: np.ndarray, fluxes: np.ndarray) -> np.ndarray:
        """(n,) the group feature (module doc): the posterior's central-68% width from CDF rows
        (n, bins + 1) at `edges`, or the log total flux of `fluxes` (n, 186)."""
        if self.group_by == "width":
            n = len(cdf)
            return _row_quantiles(cdf, edges, np.full(n, 0.84)) - _row_quantiles(cdf, edges, np.full(n, 0.16))
        return log_total_flux(fluxes)

    def group(self, values: np.ndarray) -> np.ndarray:
        """(n,) group index of feature values (n,): their quantile group on validation."""
        edges = np.asarray(self.snr_edges.numpy())[: self.snr_groups - 1]
        return np.searchsorted(edges, values, side="right")

    def category(self, z: np.ndarray) -> np.ndarray:
        inner = np.asarray(self.z_edges[1:-1])
        return np.searchsorted(inner, np.asarray(z, dtype=np.float64), side="right")

    def fit(self, cdf, edges, q, z_true, fluxes, min_count: int = 50) -> dict[str, float]:
        """Thresholds from validation galaxies: CDF rows (n, bins + 1) at `edges`, point levels q (n,),
        true z (n,), fluxes (n, 186). Returns the number of cells and of pooled (fallback) cells."""
        if not self.built:
            self.build((None, 1))
        g = self.feature(cdf, np.asarray(edges, dtype=np.float64), fluxes)
        if self.snr_groups > 1:
            self.snr_edges.assign(np.quantile(g, np.linspace(0, 1, self.snr_groups + 1)[1:-1]))
        scores = np.abs(cdf_at(cdf, edges, z_true) - np.asarray(q, dtype=np.float64))
        cat, sg = self.category(z_true), self.group(g)
        table = np.ones((len(self.z_edges) - 1, self.snr_groups))
        fallbacks = 0
        for b in range(table.shape[0]):
            in_b = cat == b
            pooled = threshold(scores[in_b], self.level)
            for s in range(self.snr_groups):
                cell = in_b & (sg == s)
                table[b, s] = threshold(scores[cell], self.level) if cell.sum() >= min_count else pooled
                fallbacks += int(cell.sum() < min_count)
        self.thresholds.assign(table)
        return {"conformal_cells": float(table.size), "conformal_fallbacks": float(fallbacks)}

    def interval(self, cdf, edges, q, z, fluxes) -> tuple[np.ndarray, np.ndarray]:
        """(z_lower, z_upper): the hull of each row's conformal set (see module doc); vectorised over
        rows (n, bins + 1) and model bins. Contains z (n,) by construction."""
        edges = np.asarray(edges, dtype=np.float64)
        mids = 0.5 * (edges[:-1] + edges[1:])
        per_bin = np.asarray(self.thresholds.numpy())[self.category(mids)]  # (bins, snr groups)
        t = per_bin.T[self.group(self.feature(cdf, edges, fluxes))]  # (n, bins)
        q = np.asarray(q, dtype=np.float64)[:, None]
        lo_level, hi_level = q - t, q + t
        c0, c1 = cdf[:, :-1], cdf[:, 1:]
        inside = (c1 >= lo_level) & (c0 <= hi_level)  # bin j meets the set
        rows = np.arange(len(cdf))
        first = inside.argmax(axis=1)
        last = inside.shape[1] - 1 - inside[:, ::-1].argmax(axis=1)
        width = np.diff(edges)

        def at(j, level, from_top: bool):
            a0, a1, lv = c0[rows, j], c1[rows, j], level[rows, j]
            frac = (lv - a0) / np.maximum(a1 - a0, 1e-300)
            frac = np.where(a1 <= lv, 1.0, frac) if from_top else np.where(a0 >= lv, 0.0, frac)
            return edges[j] + np.clip(frac, 0.0, 1.0) * width[j]

        z = np.asarray(z, dtype=np.float64)
        return np.minimum(at(first, lo_level, False), z), np.maximum(at(last, hi_level, True), z)


def conformal_layer(model: keras.Model) -> ConformalIntervals | None:
    for layer in reversed(model.layers):
        if isinstance(layer, ConformalIntervals):
            return layer
    return None
