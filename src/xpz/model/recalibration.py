"""Coverage that holds per bin: a quantile recalibration of p(z | x) by predicted z and S/N.

The global temperature (`xpz.model.calibration`) makes the 68% interval cover 68% of the
validation set on average, but not in every bin: too wide at low z, too narrow at high z. Here
the posterior CDF F(z | x) is remapped within groups g of (predicted z, signal-to-noise)

    F'(z | x) = G_g(F(z | x)),   G_g = the empirical CDF of the validation PIT values F(z_true | x)
                                       of the galaxies in group g

(quantile recalibration, Kuleshov, Fenner & Ermon 2018, applied per group as in conditional
conformal calibration). On validation F'(z_true) is then uniform in every group, so every
central interval, the 68% one included, covers its share there; nothing else is fitted.

Groups: bins of the (pre-recalibration) posterior median of width `z_step` up to `z_max` (one
open bin above), times the quantiles of the log total flux in `snr_groups` parts (the S/N of a
spectrum rises monotonically with its total flux under the instrument model). Grouping by the
median, which no quantile shift moves, lets `xpz.model.calibration.choose_shift` pick the point
estimate afterwards on F' itself (models saved before `group_by` existed group by the shifted point
estimate, as they were fitted). A group with fewer than
`min_count` validation galaxies uses its z bin pooled over S/N, and if that is still too small,
all galaxies. The map G_g is stored as the PIT quantiles at `LEVELS` levels in the
`CoverageRecalibration` layer (a pass-through with weights), so a saved model carries it.
Only validation data reaches `fit_recalibration`.
"""

from __future__ import annotations

import keras
import numpy as np

from xpz.model.passthrough import PassThrough

LEVELS = np.linspace(0.0, 1.0, 101)


def log_total_flux(fluxes: np.ndarray) -> np.ndarray:
    """log10 of each spectrum's total flux (floored at 1e-3): the S/N ordering of the groups."""
    total = np.nan_to_num(np.asarray(fluxes, dtype=np.float64).sum(axis=1), nan=1e-3, posinf=1e9, neginf=1e-3)
    return np.log10(np.maximum(total, 1e-3))


@keras.saving.register_keras_serializable(package="xpz")
class CoverageRecalibration(PassThrough):
    """Pass-through layer holding the per-group PIT maps (see module doc)."""

    def __init__(self, z_edges, snr_groups: int = 4, group_by: str = "point", **kwargs):
        super().__init__(**kwargs)
        self.z_edges = [float(e) for e in z_edges]  # inner edges of the predicted-z groups
        self.snr_groups = int(snr_groups)
        if group_by not in ("median", "point"):
            raise ValueError(f"CoverageRecalibration: group_by must be 'median' or 'point', got {group_by!r}")
        self.group_by = group_by  # which pre-recalibration estimate picks the z group

    def build(self, input_shape):
        nz, ns = len(self.z_edges) + 1, self.snr_groups
        self.snr_edges = self.add_weight(name="snr_edges", shape=(max(ns - 1, 1),), initializer="zeros",
                                         trainable=False, dtype="float64")  # fmt: skip
        self.pit_quantiles = self.add_weight(name="pit_quantiles", shape=(nz, ns, len(LEVELS)),
                                             initializer="zeros", trainable=False, dtype="float64")  # fmt: skip
        self.pit_quantiles.assign(np.broadcast_to(LEVELS, (nz, ns, len(LEVELS))))  # identity

    def get_config(self):
        return {**super().get_config(), "z_edges": self.z_edges, "snr_groups": self.snr_groups,
                "group_by": self.group_by}  # fmt: skip

    def groups(self, z_point: np.ndarray, fluxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z group, S/N group) indices of each galaxy."""
        zg = np.searchsorted(
            np.asarray(self.z_edges), np.nan_to_num(np.asarray(z_point, float)), side="right"
        )
        sg = np.searchsorted(np.asarray(self.snr_edges.numpy())[: self.snr_groups - 1], log_total_flux(fluxes),
                             side="right")  # fmt: skip
        return zg, sg

    def apply(self, cdf: np.ndarray, z_point: np.ndarray, fluxes: np.ndarray) -> np.ndarray:
        """F' = G_g(F): the recalibrated CDF rows (n, bins + 1) at the bin edges."""
        table = np.asarray(self.pit_quantiles.numpy())
        zg, sg = self.groups(z_point, fluxes)
        out = np.empty_like(cdf)
        for key in set(zip(zg.tolist(), sg.tolist())):
            rows = (zg == key[0]) & (sg == key[1])
            out[rows] = np.interp(cdf[rows], table[key], LEVELS)
        out[:, 0], out[:, -1] = 0.0, 1.0
        return np.maximum.accumulate(out, axis=1)

    def fit(
        self, pit: np.ndarray, z_point: np.ndarray, fluxes: np.ndarray, min_count: int = 50
    ) -> dict[str, float]:
        """Fit the maps from validation PIT values F(z_true | x) (see module doc)."""
        if not self.built:
            self.build((None, 1))
        pit = np.clip(np.asarray(pit, float), 0.0, 1.0)
        lt = log_total_flux(fluxes)
        if self.snr_groups > 1:
            self.snr_edges.assign(np.quantile(lt, np.linspace(0, 1, self.snr_groups + 1)[1:-1]))
        zg, sg = self.groups(z_point, fluxes)

        def quantiles(values: np.ndarray) -> np.ndarray:
            q = np.quantile(values, LEVELS)
            q[0], q[-1] = 0.0, 1.0
            return np.maximum.accumulate(q + 1e-9 * np.arange(len(q)))  # strictly increasing for interp

        overall = quantiles(pit)
        nz = len(self.z_edges) + 1
        table = np.empty((nz, self.snr_groups, len(LEVELS)))
        fallbacks = 0
        for i in range(nz):
            in_z = zg == i
            pooled = quantiles(pit[in_z]) if in_z.sum() >= min_count else overall
            for j in range(self.snr_groups):
                cell = in_z & (sg == j)
                table[i, j] = quantiles(pit[cell]) if cell.sum() >= min_count else pooled
                fallbacks += int(cell.sum() < min_count)
        self.pit_quantiles.assign(table)
        return {
            "recalibration_groups": float(nz * self.snr_groups),
            "recalibration_fallbacks": float(fallbacks),
        }


def recalibration_layer(model: keras.Model) -> CoverageRecalibration | None:
    for layer in reversed(model.layers):
        if isinstance(layer, CoverageRecalibration):
            return layer
    return None
