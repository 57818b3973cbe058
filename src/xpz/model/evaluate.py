"""Test-set evaluation: metric definitions, the seed's per-bin table (Table 3), baselines, figures.

The one place that defines the bins and the metrics (the training-time calibration reuses them):

- dz = z_pred - z_true; MAE, RMSE, bias = mean(dz);
- sigma_NMAD = 1.4826 * median(|dz - median(dz)| / (1 + z_true));
- outlier fraction = share of |dz| / (1 + z_true) > 0.15;
- per bin of z_true (width 0.05 on [0, 0.6], the last bin closed on the right): mean error, its
  standard error (sample std / sqrt(count): a sparse high-z bin's mean error is only known to
  about +-0.02), std (population, ddof=0), MAE, count, share of the binned objects in %, coverage
  of the 68% interval;
- worst per-bin bias = the mean error of largest magnitude over bins ending at or below
  `bias_z_max` (0.5) that hold at least `min_bin_count` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xpz.files import write_text_atomic
from xpz.model.figures import (  # noqa: F401  (re-exported: the evaluation's figures)
    bin_bias_figure,
    loss_curves_figure,
    pred_vs_true_figure,
    z_histogram_figure,
)
from xpz.model.pdf_metrics import PDF_BIN_COLUMNS
from xpz.spectra import FAMILY_COLUMN, ID_COLUMN, TARGET_COLUMN, flux_matrix

if TYPE_CHECKING:
    from xpz.config import Config, EvaluateConfig

NMAD_SCALE = 1.4826
BIN_METRICS = ("mean_error", "mean_error_se", "std", "mae", "count", "share", "coverage_68")
BIN_COLUMNS = ("bin", "z_lo", "z_hi", *BIN_METRICS)


# ----------------------------------------------------------------------------- pure metrics
def bin_edges(width: float, z_max: float) -> np.ndarray:
    """Edges [0, width, ..., z_max] of the evaluation bins (params `evaluate.bin_width`, `evaluate.z_max`)."""
    n = int(round(z_max / width))
    return np.round(np.linspace(0.0, n * width, n + 1), 10)


def bin_label(lo: float, hi: float) -> str:
    return f"{lo:.2f}-{hi:.2f}"


def sigma_nmad(z_true, z_pred) -> float:
    z_true, dz = np.asarray(z_true, float), np.asarray(z_pred, float) - np.asarray(z_true, float)
    if len(dz) == 0:
        return float("nan")
    return float(NMAD_SCALE * np.median(np.abs(dz - np.median(dz)) / (1.0 + z_true)))


def outlier_fraction(z_true, z_pred, threshold: float) -> float:
    z_true, dz = np.asarray(z_true, float), np.asarray(z_pred, float) - np.asarray(z_true, float)
    if len(dz) == 0:
        return float("nan")
    return float(np.mean(np.abs(dz) / (1.0 + z_true) > threshold))


def coverage(z_true, z_lower, z_upper) -> float:
    """Share of z_true inside [z_lower, z_upper]; NaN when there are no intervals."""
    z_true, lo, hi = (np.asarray(a, float) for a in (z_true, z_lower, z_upper))
    if len(z_true) == 0 or np.isnan(lo).all() or np.isnan(hi).all():
        return float("nan")
    return float(np.mean((z_true >= lo) & (z_true <= hi)))


def point_metrics(z_true, z_pred, outlier_threshold: float) -> dict[str, float]:
    z_true, z_pred = np.asarray(z_true, float), np.asarray(z_pred, float)
    dz = z_pred - z_true
    return {
        "mae": float(np.mean(np.abs(dz))),
        "rmse": float(np.sqrt(np.mean(dz**2))),
        "bias": float(np.mean(dz)),
        "sigma_nmad": sigma_nmad(z_true, z_pred),
        "outlier_fraction": outlier_fraction(z_true, z_pred, outlier_threshold),
    }


def bin_table(z_true, z_pred, z_lower=None, z_upper=None, *, edges) -> pd.DataFrame:
    """The seed's Table 3 per z_true bin (`edges`: `bin_edges(...)`), plus MAE, count and 68%-interval coverage."""
    edges = np.asarray(edges, float)
    z_true, z_pred = np.asarray(z_true, float), np.asarray(z_pred, float)
    nan = np.full_like(z_true, np.nan)
    lo = nan if z_lower is None else np.asarray(z_lower, float)
    hi = nan if z_upper is None else np.asarray(z_upper, float)
    idx = np.searchsorted(edges, z_true, side="right") - 1
    idx[z_true == edges[-1]] = len(edges) - 2  # last bin closed on the right
    inside = (idx >= 0) & (idx < len(edges) - 1)
    total = int(inside.sum())
    rows = []
    for b in range(len(edges) - 1):
        m = inside & (idx == b)
        dz = z_pred[m] - z_true[m]
        n = int(m.sum())
        rows.append(
            {
                "bin": bin_label(edges[b], edges[b + 1]),
                "z_lo": float(edges[b]),
                "z_hi": float(edges[b + 1]),
                "mean_error": float(dz.mean()) if n else np.nan,
                "mean_error_se": float(dz.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
                "std": float(dz.std()) if n else np.nan,
                "mae": float(np.abs(dz).mean()) if n else np.nan,
                "count": n,
                "share": 100.0 * n / total if total else np.nan,
                "coverage_68": coverage(z_true[m], lo[m], hi[m]) if n else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=list(BIN_COLUMNS))


def worst_bin_bias(table: pd.DataFrame, z_max: float, min_count: int) -> tuple[float, float]:
    """(mean error of largest |.|, lower edge of its bin) over populated bins ending <= z_max."""
    sel = table[(table["z_hi"] <= z_max + 1e-9) & (table["count"] >= min_count)]
    sel = sel[sel["mean_error"].notna()]
    if sel.empty:
        return float("nan"), float("nan")
    row = sel.iloc[int(np.argmax(sel["mean_error"].abs().to_numpy()))]
    return float(row["mean_error"]), float(row["z_lo"])


def table_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """The per-bin table as a GitHub Markdown table."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if c == "count":
                cells.append(str(int(v)))
            elif c == "share":
                cells.append("-" if pd.isna(v) else f"{v:.2f}")
            elif isinstance(v, (float, np.floating)):
                cells.append("-" if np.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, path: Path | str) -> Path:
    """Write the table as CSV (.csv) or Markdown (.md), atomically."""
    path = Path(path)
    text = table_markdown(table) if path.suffix == ".md" else table.to_csv(index=False)
    return write_text_atomic(path, text)


def summary_metrics(
    prefix: str,
    z_true,
    z_pred,
    z_lower=None,
    z_upper=None,
    cfg: EvaluateConfig | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Flat metrics `{prefix}mae`, ... `{prefix}worst_bin_bias` and the bin table of one predictor."""
    from xpz.config import EvaluateConfig

    cfg = cfg or EvaluateConfig()
    table = bin_table(z_true, z_pred, z_lower, z_upper, edges=bin_edges(cfg.bin_width, cfg.z_max))
    metrics = point_metrics(z_true, z_pred, cfg.outlier_threshold)
    if z_lower is not None:
        metrics["coverage_68"] = coverage(z_true, z_lower, z_upper)
    worst, worst_z = worst_bin_bias(table, cfg.bias_z_max, cfg.min_bin_count)
    metrics["worst_bin_bias"] = worst
    metrics["worst_bin_bias_z"] = worst_z
    return {f"{prefix}{k}": v for k, v in metrics.items()}, table


def bin_metrics(table: pd.DataFrame, columns=BIN_METRICS) -> dict[str, float]:
    """`bin_0.10-0.15/mean_error` ... (NaN entries of empty bins are left out)."""
    out = {}
    for _, row in table.iterrows():
        for m in columns:
            v = row[m]
            if not pd.isna(v):
                out[f"bin_{row['bin']}/{m}"] = float(v)
    return out


# ----------------------------------------------------------------------------- baselines
def mean_baseline(train_z, n: int) -> np.ndarray:
    """Predict the training mean for every object."""
    return np.full(n, float(np.mean(train_z)))


def unit_normalise(fluxes: np.ndarray) -> np.ndarray:
    x = np.asarray(fluxes, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_baseline(train_fluxes, train_z, test_fluxes, k: int = 10) -> np.ndarray:
    """k-nearest neighbours (Euclidean, uniform mean) on unit-normalised fluxes."""
    from sklearn.neighbors import KNeighborsRegressor

    knn = KNeighborsRegressor(n_neighbors=min(k, len(train_z)), n_jobs=1)
    knn.fit(unit_normalise(train_fluxes), np.asarray(train_z, float))
    return knn.predict(unit_normalise(test_fluxes))


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    metrics: dict[str, float]
    bin_table: pd.DataFrame
    predictions: pd.DataFrame  # source_id, z_true, z, z_lower, z_upper
    figures: dict[str, Any] = field(default_factory=dict)
    baseline_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    pdfs: Any = None  # the test galaxies' p(z): a qp Ensemble (xpz.model.pdf_metrics), or None
    snr_table: pd.DataFrame | None = None  # per S/N quartile (xpz.model.coverage_report)
    family_tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # per galaxy family

    def write_pdfs(self, path: Path | str) -> Path | None:
        """The test p(z) as a qp HDF5 file (None for a model without PDFs)."""
        if self.pdfs is None:
            return None
        from xpz.files import atomic_path

        with atomic_path(Path(path)) as tmp:
            h5 = tmp.with_name(tmp.name + ".hdf5")  # qp picks the format from the suffix
            self.pdfs.write_to(str(h5))
            h5.replace(tmp)
        return Path(path)

    def table_markdown(self) -> str:
        return table_markdown(self.bin_table)

    def write_tables(self, directory: Path | str) -> dict[str, Path]:
        d = Path(directory)
        out = {
            "csv": write_table(self.bin_table, d / "bin_table.csv"),
            "md": write_table(self.bin_table, d / "bin_table.md"),
        }
        if self.snr_table is not None:
            out.update({f"snr_{k}": write_table(self.snr_table, d / f"snr_table.{k}") for k in ("csv", "md")})
        for family, table in self.family_tables.items():
            for k in ("csv", "md"):
                out[f"{family}_{k}"] = write_table(table, d / f"bin_table_{family}.{k}")
        return out


def evaluate(model, splits, cfg: Config, history: dict[str, list[float]] | None = None) -> Evaluation:
    """Metrics, per-bin table, baselines and figures of `model` on the test split."""
    from xpz.model.coverage_report import coverage_spread, snr_metrics, snr_table
    from xpz.model.posterior import predict_posterior

    ecfg = cfg.evaluate
    test = splits.test
    z_true, x_test = test[TARGET_COLUMN].to_numpy(float), flux_matrix(test)
    pred, edges, cdf = predict_posterior(model, x_test, batch_size=ecfg.batch_size)
    metrics, table = summary_metrics("test_", z_true, pred["z"], pred["z_lower"], pred["z_upper"], ecfg)
    metrics.update(bin_metrics(table))
    snr = snr_table(z_true, pred["z"], pred["z_lower"], pred["z_upper"], x_test)
    metrics.update(
        {
            **snr_metrics(snr),
            **{
                f"test_{k}": v
                for k, v in coverage_spread(table, snr, cfg.coverage.z_max, cfg.coverage.min_count).items()
            },
        }
    )
    extra_figures, pdfs = _reliability(model, test, pred, edges, cdf, cfg, metrics)
    if pdfs is not None:
        table = pdfs[1]
        metrics.update(bin_metrics(table, PDF_BIN_COLUMNS))
    predictions = pd.DataFrame(
        {
            ID_COLUMN: test[ID_COLUMN].to_numpy(),
            "z_true": z_true,
            "z": pred["z"].to_numpy(),
            "z_lower": pred["z_lower"].to_numpy(),
            "z_upper": pred["z_upper"].to_numpy(),
            "ood_score": pred["ood_score"].to_numpy(),
            "eligible": pred["eligible"].to_numpy(),
        }
    )
    family_metrics, family_tables = per_family(test, predictions, ecfg)
    metrics.update(family_metrics)
    baseline_tables = {}
    if ecfg.baselines:
        train_z = splits.train[TARGET_COLUMN].to_numpy(float)
        for name, zb in (
            ("baseline_mean", mean_baseline(train_z, len(test))),
            ("baseline_knn", knn_baseline(flux_matrix(splits.train), train_z, x_test, ecfg.knn_k)),
        ):
            m, t = summary_metrics(f"{name}/test_", z_true, zb, cfg=ecfg)
            metrics.update(m)
            baseline_tables[name] = t
            predictions[f"z_{name}"] = zb
    figures = {
        "bin_bias": bin_bias_figure(table),
        "z_histogram": z_histogram_figure(z_true, predictions["z"], ecfg.z_max),
        "pred_vs_true": pred_vs_true_figure(z_true, predictions["z"], ecfg.z_max),
    }
    if history:
        figures["loss_curves"] = loss_curves_figure(history)
    figures.update(extra_figures)
    return Evaluation(
        metrics,
        table,
        predictions,
        figures,
        baseline_tables,
        None if pdfs is None else pdfs[0],
        snr,
        family_tables,
    )


def per_family(
    test: pd.DataFrame, predictions: pd.DataFrame, cfg: EvaluateConfig
) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    """Every summary metric and the per-bin table per galaxy family (`family` column of the test
    split; none for data without it): `test_mae_bagpipes`, `test_coverage_68_kcorrect`, ... plus
    `test_flagged_<family>` (share not eligible) and `test_low_z_bias_<family>` (mean error of the
    galaxies with true z < `evaluate.low_z_max`)."""
    if FAMILY_COLUMN not in test.columns:
        return {}, {}
    metrics: dict[str, float] = {}
    tables: dict[str, pd.DataFrame] = {}
    family = test[FAMILY_COLUMN].astype(str).to_numpy()
    for name in sorted(set(family)):
        rows = family == name
        p = predictions.loc[rows]
        m, tables[name] = summary_metrics("test_", p["z_true"], p["z"], p["z_lower"], p["z_upper"], cfg)
        metrics.update({f"{k}_{name}": v for k, v in m.items()})
        metrics[f"test_flagged_{name}"] = float(1.0 - p["eligible"].to_numpy(bool).mean())
        low = p["z_true"].to_numpy() < cfg.low_z_max
        if low.any():
            metrics[f"test_low_z_bias_{name}"] = float((p["z"] - p["z_true"]).to_numpy()[low].mean())
        metrics[f"test_n_{name}"] = float(rows.sum())
    return metrics, tables


def _reliability(model, test, pred, edges, cdf, cfg: Config, metrics: dict[str, float]):
    """PDF metrics (`xpz.model.pdf_metrics`) and the eligibility report (`xpz.model.ood`) into
    `metrics`; returns (figures, (qp Ensemble, bin table with PDF columns) or None)."""
    from xpz.model.figures import ood_report
    from xpz.model.ood import ood_layer

    figures: dict[str, Any] = {}
    pdfs = None
    z_true = test[TARGET_COLUMN].to_numpy(float)
    if cdf is not None:
        from xpz.model.pdf_metrics import assess_pdfs

        table = bin_table(z_true, pred["z"], pred["z_lower"], pred["z_upper"],
                          edges=bin_edges(cfg.evaluate.bin_width, cfg.evaluate.z_max))  # fmt: skip
        m, table, figures["pit"], ens = assess_pdfs(
            z_true, pred, edges, cdf, table, test[ID_COLUMN].to_numpy()
        )
        metrics.update({f"test_{k}": v for k, v in m.items()})
        pdfs = (ens, table)
    layer = ood_layer(model)
    if layer is not None and cfg.evaluate.impostors_per_kind > 0:
        from xpz.data.impostors import generate_impostors

        impostors = generate_impostors(cfg.evaluate.impostors_per_kind, cfg.data)
        m, figures["eligibility"] = ood_report(layer, flux_matrix(test), impostors)
        metrics.update(m)
    return figures, pdfs
