"""Coverage and mean error per quartile of signal-to-noise, and the spread of per-bin coverage.

The companion of the per-bin table (`xpz.model.evaluate.bin_table`, bins of true z): the same
68%-interval coverage, mean error (z_pred - z_true), MAE and count, per quantile group of the log10
total flux of the evaluated galaxies (`xpz.model.recalibration.log_total_flux`; S/N rises
monotonically with total flux under the instrument model). The groups are quantiles of the
evaluated set itself, so a table is comparable across models. MLflow metrics `snr_q1/coverage_68`,
`snr_q1/mean_error`, ... (q1 = faintest), like `bin_<bin>/coverage_68`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xpz.model.recalibration import log_total_flux

SNR_METRICS = ("mean_error", "mae", "count", "coverage_68")
SNR_COLUMNS = ("group", "log_flux_lo", "log_flux_hi", *SNR_METRICS)


def snr_table(z_true, z_pred, z_lower, z_upper, fluxes, groups: int = 4) -> pd.DataFrame:
    """One row per S/N group (quantiles of log10 total flux of `fluxes` (n, 186); `group` q1 =
    faintest): mean error, MAE, count and coverage of [z_lower, z_upper] (NaN without intervals)."""
    z_true, z_pred = np.asarray(z_true, float), np.asarray(z_pred, float)
    lo, hi = np.asarray(z_lower, float), np.asarray(z_upper, float)
    lt = log_total_flux(fluxes)
    cuts = np.quantile(lt, np.linspace(0, 1, groups + 1)) if len(lt) else np.zeros(groups + 1)
    idx = np.clip(np.searchsorted(cuts[1:-1], lt, side="right"), 0, groups - 1)
    has_interval = not (np.isnan(lo).all() or np.isnan(hi).all())
    rows = []
    for g in range(groups):
        m = idx == g
        dz = z_pred[m] - z_true[m]
        n = int(m.sum())
        inside = (z_true[m] >= lo[m]) & (z_true[m] <= hi[m])
        rows.append(
            {
                "group": f"q{g + 1}",
                "log_flux_lo": float(cuts[g]),
                "log_flux_hi": float(cuts[g + 1]),
                "mean_error": float(dz.mean()) if n else np.nan,
                "mae": float(np.abs(dz).mean()) if n else np.nan,
                "count": n,
                "coverage_68": float(inside.mean()) if n and has_interval else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=list(SNR_COLUMNS))


def snr_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`snr_q1/coverage_68`, `snr_q1/mean_error`, ... (NaN entries left out)."""
    rows = table.to_dict("records")
    return {f"snr_{r['group']}/{m}": float(r[m]) for r in rows for m in SNR_METRICS if not pd.isna(r[m])}


def coverage_spread(
    bin_table: pd.DataFrame,
    snr: pd.DataFrame,
    z_max: float,
    min_count: int,
) -> dict[str, float]:
    """The least and largest 68% coverage over the bins of true z ending at or below `z_max` with at
    least `min_count` objects (`coverage_68_bin_min` / `_max`) and over the S/N groups
    (`coverage_68_snr_min` / `_max`): what issue 12's "0.60-0.76 in every bin and quartile" reads."""
    sel = bin_table[(bin_table["z_hi"] <= z_max + 1e-9) & (bin_table["count"] >= min_count)][
        "coverage_68"
    ].dropna()
    by_snr = snr["coverage_68"].dropna()
    nan = float("nan")
    return {
        "coverage_68_bin_min": float(sel.min()) if len(sel) else nan,
        "coverage_68_bin_max": float(sel.max()) if len(sel) else nan,
        "coverage_68_snr_min": float(by_snr.min()) if len(by_snr) else nan,
        "coverage_68_snr_max": float(by_snr.max()) if len(by_snr) else nan,
    }
