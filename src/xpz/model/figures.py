"""The evaluation's figures (matplotlib, no pyplot state): loss curves, per-bin bias, z histograms,
predicted against true z. Logged to MLflow and written to reports/figures by the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kw) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kw)


def loss_curves_figure(history: dict[str, list[float]]) -> Figure:
    """Training and validation loss and MAE per epoch (an ensemble's other members, `member_<k>/...`,
    as thin lines in the same colours)."""
    fig = _figure(figsize=(10, 4), layout="constrained")
    members = sorted({k.split("/", 1)[0] for k in history if k.startswith("member_") and "/" in k})
    for ax, key in zip(fig.subplots(1, 2), ("loss", "mae")):
        for name, style, colour in ((key, "-", "C0"), (f"val_{key}", "--", "C1")):
            if history.get(name):
                ax.plot(range(1, len(history[name]) + 1), history[name], style, color=colour, label=name)
            for member in members:
                values = history.get(f"{member}/{name}")
                if values:
                    ax.plot(range(1, len(values) + 1), values, style, color=colour, lw=0.8, alpha=0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        title = f"{'loss' if key == 'loss' else 'MAE'}: training and validation"
        ax.set_title(title + (f" ({len(members) + 1} members)" if members else ""))
        ax.legend()
    return fig


def bin_bias_figure(table: pd.DataFrame) -> Figure:
    """Mean error per bin with std error bars (the seed's Figure 16), and the standard error of the
    mean as thick bars: what tells a real bias from a sparse bin's noise."""
    fig = _figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    centres = 0.5 * (table["z_lo"] + table["z_hi"])
    ax.errorbar(centres, table["mean_error"], yerr=table["std"], fmt="o", capsize=3, lw=0.8, label="std")
    ax.errorbar(
        centres,
        table["mean_error"],
        yerr=table["mean_error_se"],
        fmt="none",
        lw=3,
        label="standard error of the mean",
    )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("true redshift bin")
    ax.set_ylabel("mean error (z_pred - z_true)")
    ax.set_title("Mean error per redshift bin: std and standard error of the mean")
    ax.legend()
    return fig


def z_histogram_figure(z_true, z_pred, z_max: float, bins: int = 60) -> Figure:
    fig = _figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    hi = max(float(np.max(z_true)), float(np.max(z_pred)), z_max)
    b = np.linspace(min(0.0, float(np.min(z_pred))), hi, bins + 1)
    ax.hist(z_true, bins=b.tolist(), alpha=0.6, label="true z")
    ax.hist(z_pred, bins=b.tolist(), alpha=0.6, label="predicted z")
    ax.set_xlabel("redshift")
    ax.set_ylabel("galaxies")
    ax.legend()
    ax.set_title("Predicted and true redshifts")
    return fig


def pred_vs_true_figure(z_true, z_pred, z_max: float, bins: int = 120) -> Figure:
    """2-D histogram of predicted vs true z, log colour scale, the diagonal."""
    from matplotlib.colors import LogNorm

    fig = _figure(figsize=(6, 5.4), layout="constrained")
    ax = fig.add_subplot()
    hi = max(float(np.max(z_true)), float(np.max(z_pred)), z_max)
    lo = min(0.0, float(np.min(z_pred)))
    _, _, _, image = ax.hist2d(z_true, z_pred, bins=bins, range=[[lo, hi], [lo, hi]], norm=LogNorm(), cmin=1)
    ax.plot([lo, hi], [lo, hi], "r-", lw=0.8)
    fig.colorbar(image, ax=ax, label="galaxies")
    ax.set_xlabel("true z")
    ax.set_ylabel("predicted z")
    ax.set_title("Predicted vs true redshift")
    return fig
