"""Per-galaxy p(z) in the field's container (qp) and the field's PDF and point metrics.

- PDFs: a `qp` Ensemble of the histogram representation (`qp.hist`: the model's redshift bins
  and the density in each, from the recalibrated CDF of `xpz.model.posterior.predict_posterior`),
  with the ancillary columns source_id, z, z_lower, z_upper, ood_score, eligible. `PdfWriter`
  writes one in chunks into qp's own HDF5 layout (`Ensemble.initializeHdf5Write` /
  `writeHdf5Chunk` / `finalizeHdf5Write`), so memory is bounded by the chunk; `qp.read(path)`
  reads it back without xpz.
- PIT (probability integral transform, Dawid 1984) and its KS / CvM / AD statistics against
  the uniform distribution: `qp.metrics.PIT` (LSST DESC RAIL's implementation).
- CRPS (Hersbach 2000; Gneiting & Raftery 2007): integral of (F(z) - H(z - z_true))^2 dz, exact for
  the piecewise-linear CDF of a histogram (qp has no CRPS).
- Point metrics in ez = (z_pred - z_true) / (1 + z_true): `qp.metrics` PointBias (median ez),
  PointSigmaMAD (sigma_NMAD), PointSigmaIQR (IQR / 1.349) and PointOutlierRate (|ez| >
  max(0.06, 3 sigma_IQR), the LSST Science Book rule); the mean ez and the rate of |ez| > 0.15.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ANCIL_COLUMNS = ("source_id", "z", "z_lower", "z_upper", "ood_score", "eligible")
PDF_BIN_COLUMNS = ("crps", "ez_sigma_nmad", "ez_outlier_rate_3sigma_iqr")


# ----------------------------------------------------------------------------- the qp container
def qp_ensemble(edges: np.ndarray, cdf: np.ndarray, ancil: Mapping[str, np.ndarray] | None = None):
    """A `qp.hist` Ensemble from CDFs at the bin edges ((n, bins + 1)); `ancil` columns of length n."""
    import qp

    edges = np.asarray(edges, dtype=np.float64)
    density = np.diff(np.asarray(cdf, dtype=np.float64), axis=1) / np.diff(edges)[None, :]
    ens = qp.Ensemble(qp.hist, data={"bins": edges, "pdfs": density})
    if ancil:
        ens.set_ancil({k: np.asarray(v) for k, v in ancil.items()})
    return ens


class PdfWriter:
    """Write p(z) chunk by chunk into one qp HDF5 file of `total` rows, at a temporary path renamed
    onto `path` by `close()` (nothing at `path` unless every row was written; `abort()` removes it)."""

    def __init__(self, path: Path | str, total: int):
        self.path, self.total = Path(path), int(total)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.hdf5")
        self.rows = 0
        self._group = self._file = self._last = None

    def write(self, edges: np.ndarray, cdf: np.ndarray, ancil: Mapping[str, np.ndarray]) -> None:
        ens = qp_ensemble(edges, cdf, ancil)
        n = ens.npdf
        if self.rows + n > self.total:
            raise ValueError(f"PdfWriter: {self.rows + n} rows exceed the declared {self.total}")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._group, self._file = ens.initializeHdf5Write(str(self.tmp), self.total)
        ens.writeHdf5Chunk(self._group, self.rows, self.rows + n)
        self.rows += n
        self._last = ens

    def close(self) -> Path:
        if self._last is None:
            raise ValueError("PdfWriter: no rows written")
        if self.rows != self.total:
            self.abort()
            raise ValueError(f"PdfWriter: {self.rows} rows written, {self.total} declared")
        self._last.finalizeHdf5Write(self._file)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)


def write_pdfs(path: Path | str, edges, cdf, ancil: Mapping[str, np.ndarray], chunk: int = 50_000) -> Path:
    """Write all rows of `cdf` (with `ancil`) to a qp HDF5 file in chunks of `chunk` rows."""
    writer = PdfWriter(path, len(cdf))
    try:
        for start in range(0, len(cdf), chunk):
            sl = slice(start, start + chunk)
            writer.write(edges, cdf[sl], {k: np.asarray(v)[sl] for k, v in ancil.items()})
        return writer.close()
    except BaseException:
        writer.abort()
        raise


# ----------------------------------------------------------------------------- metrics
def crps(edges: np.ndarray, cdf: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """(n,) CRPS of piecewise-linear CDFs (values `cdf` at `edges`) for true values `z_true`:
    the integral of (F(z) - H(z - z_true))^2 over z, exact (F = 0 below, 1 above the edges)."""
    e = np.asarray(edges, dtype=np.float64)
    f = np.asarray(cdf, dtype=np.float64)
    zt = np.asarray(z_true, dtype=np.float64)
    w = np.diff(e)[None, :]
    a, b = f[:, :-1], f[:, 1:]
    above = (e[None, :-1] > zt[:, None]).astype(float)  # H = 1 on segments above z_true
    below = (e[None, 1:] <= zt[:, None]).astype(float)  # H = 0 on segments below z_true
    ga, gb = a - above, b - above
    full = w * (ga**2 + ga * gb + gb**2) / 3.0
    total = np.sum(full * (above + below), axis=1)
    # the segment holding z_true: split it at z_true
    j = np.clip(np.searchsorted(e, zt, side="right") - 1, 0, len(e) - 2)
    inside = (zt >= e[0]) & (zt < e[-1])  # segment j: e_j <= z_true < e_j+1
    rows = np.arange(len(zt))
    x0, x1 = e[j], e[j + 1]
    f0, f1 = f[rows, j], f[rows, j + 1]
    t = np.clip((zt - x0) / (x1 - x0), 0.0, 1.0)
    fm = f0 + t * (f1 - f0)
    left = (zt - x0) * (f0**2 + f0 * fm + fm**2) / 3.0
    right = (x1 - zt) * ((fm - 1) ** 2 + (fm - 1) * (f1 - 1) + (f1 - 1) ** 2) / 3.0
    total += np.where(inside, left + right, 0.0)
    total += np.clip(e[0] - zt, 0.0, None) + np.clip(zt - e[-1], 0.0, None)  # outside the edges
    return total


def point_metrics_ez(z_true, z_pred) -> dict[str, float]:
    """The field's point metrics in ez = (z_pred - z_true) / (1 + z_true) (see module doc)."""
    from qp.metrics.point_estimate_metric_classes import (
        PointBias,
        PointOutlierRate,
        PointSigmaIQR,
        PointSigmaMAD,
    )

    zt, zp = np.asarray(z_true, float), np.asarray(z_pred, float)
    if len(zt) == 0:
        return {k: float("nan") for k in ("ez_bias", "ez_bias_median", "ez_sigma_nmad", "ez_sigma_iqr",
                                          "ez_outlier_rate_0.15", "ez_outlier_rate_3sigma_iqr")}  # fmt: skip
    ez = (zp - zt) / (1.0 + zt)
    return {
        "ez_bias": float(np.mean(ez)),
        "ez_bias_median": float(PointBias().evaluate(zp, zt)),
        "ez_sigma_nmad": float(PointSigmaMAD().evaluate(zp, zt)),
        "ez_sigma_iqr": float(PointSigmaIQR().evaluate(zp, zt)),
        "ez_outlier_rate_0.15": float(np.mean(np.abs(ez) > 0.15)),
        "ez_outlier_rate_3sigma_iqr": float(PointOutlierRate().evaluate(zp, zt)),
    }


def pit_metrics(ensemble, z_true) -> tuple[np.ndarray, dict[str, float]]:
    """(PIT values, {pit_ks, pit_ks_pvalue, pit_cvm, pit_cvm_pvalue, pit_ad}) via `qp.metrics.PIT`."""
    import warnings

    from qp.metrics.pit import PIT

    pit = PIT(ensemble, np.asarray(z_true, float))
    with warnings.catch_warnings():  # scipy's anderson_ksamp, as qp calls it: the AD p-value is floored at
        # 0.001 / capped at 0.25, and its `midrank` argument is deprecated; neither touches the statistic
        warnings.filterwarnings(
            "ignore", message="(p-value (floored|capped))|(Parameter `variant`)", category=UserWarning
        )
        meta = pit.calculate_pit_meta_metrics()  # the AD p-value is not reported (only its statistic)
    out = {
        "pit_ks": float(meta["ks"].statistic),
        "pit_ks_pvalue": float(meta["ks"].pvalue),
        "pit_cvm": float(meta["cvm"].statistic),
        "pit_cvm_pvalue": float(meta["cvm"].pvalue),
        "pit_ad": float(meta["ad"].statistic),
        "pit_outlier_rate": float(meta["outlier_rate"]),
    }
    return np.asarray(pit.pit_samps, float), out


def bin_pdf_columns(table: pd.DataFrame, z_true, z_pred, crps_values) -> pd.DataFrame:
    """The per-bin table (`xpz.model.evaluate.bin_table`) with mean CRPS, sigma_NMAD in ez and the
    3 sigma_IQR outlier rate of each bin added after the seed's columns."""
    zt, zp, c = np.asarray(z_true, float), np.asarray(z_pred, float), np.asarray(crps_values, float)
    out = table.copy()
    cols: dict[str, list[float]] = {k: [] for k in PDF_BIN_COLUMNS}
    for _, row in table.iterrows():
        last = row["z_hi"] >= table["z_hi"].max()
        m = (zt >= row["z_lo"]) & ((zt <= row["z_hi"]) if last else (zt < row["z_hi"]))
        if m.sum() == 0:
            for k in PDF_BIN_COLUMNS:
                cols[k].append(float("nan"))
            continue
        pm = point_metrics_ez(zt[m], zp[m])
        cols["crps"].append(float(c[m].mean()))
        cols["ez_sigma_nmad"].append(pm["ez_sigma_nmad"])
        cols["ez_outlier_rate_3sigma_iqr"].append(pm["ez_outlier_rate_3sigma_iqr"])
    for k in PDF_BIN_COLUMNS:
        out[k] = cols[k]
    return out


def pit_figure(pit: np.ndarray, stats: Mapping[str, float], bins: int = 50) -> Figure:
    """PIT histogram (a calibrated p(z) gives a flat one) with KS / CvM / AD in the title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(np.clip(pit, 0, 1), bins=bins, range=(0, 1), density=True, alpha=0.7, label="test galaxies")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="uniform (calibrated)")
    ax.set_xlabel("PIT = CDF(z_true)")
    ax.set_ylabel("density")
    ax.set_title(f"PIT: KS {stats['pit_ks']:.3f}, CvM {stats['pit_cvm']:.2f}, AD {stats['pit_ad']:.2f}")
    ax.legend()
    return fig


def assess_pdfs(z_true, pred: pd.DataFrame, edges, cdf, table: pd.DataFrame, source_id=None):
    """(metrics, table with the PDF columns, PIT figure, qp Ensemble) of one set's p(z)."""
    z_true = np.asarray(z_true, float)
    ancil = {c: pred[c].to_numpy() for c in ANCIL_COLUMNS[1:] if c in pred}
    ancil["source_id"] = np.arange(len(z_true)) if source_id is None else np.asarray(source_id)
    ens = qp_ensemble(edges, cdf, ancil)
    pit, metrics = pit_metrics(ens, z_true)
    c = crps(edges, cdf, z_true)
    metrics["crps"] = float(np.mean(c))
    metrics.update(point_metrics_ez(z_true, pred["z"].to_numpy()))
    return metrics, bin_pdf_columns(table, z_true, pred["z"], c), pit_figure(pit, metrics), ens
