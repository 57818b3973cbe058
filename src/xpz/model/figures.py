"""The evaluation's figures (matplotlib, no pyplot state): loss curves, per-bin bias, z histograms,
predicted against true z. Logged to MLflow and written to reports/figures by the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xpz.model.ood import OodDensity


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


def ood_report(layer: OodDensity, galaxy_fluxes, impostors) -> tuple[dict[str, float], Any]:
    """Flag rates of test galaxies and of non-galaxies (`xpz.data.impostors`: DataFrame with `kind`
    and the flux columns), and the purity/completeness curve over thresholds (figure).

    Metrics: `ood/galaxies_flagged`, `ood/<kind>_flagged`, `ood/nongalaxies_flagged`, and at the
    stored threshold the purity of the eligible set (equal numbers of galaxies and non-galaxies)."""
    from matplotlib.figure import Figure

    from xpz.spectra import flux_matrix

    s_gal = layer.score(galaxy_fluxes)
    s_imp = layer.score(flux_matrix(impostors))
    kinds = impostors["kind"].to_numpy()
    flag_gal, flag_imp = ~layer.eligible(s_gal), ~layer.eligible(s_imp)
    metrics = {
        "ood/galaxies_flagged": float(flag_gal.mean()),
        "ood/nongalaxies_flagged": float(flag_imp.mean()),
    }
    for kind in dict.fromkeys(kinds):
        metrics[f"ood/{kind}_flagged"] = float(flag_imp[kinds == kind].mean())
    # purity / completeness of the eligible set as the threshold moves (non-galaxies reweighted to
    # as many as the galaxies)
    finite = np.concatenate([s_gal, s_imp])
    grid = np.quantile(finite[np.isfinite(finite)], np.linspace(0.0, 1.0, 201))
    w = len(s_gal) / max(len(s_imp), 1)
    completeness = np.array([np.mean(s_gal <= t) for t in grid])
    contamination = np.array([w * np.sum(s_imp <= t) for t in grid])
    kept = completeness * len(s_gal)
    purity = np.where(kept + contamination > 0, kept / np.maximum(kept + contamination, 1e-12), 1.0)
    threshold = float(layer.threshold.numpy())
    at = (
        float(np.mean(~flag_gal)),
        float((~flag_gal).sum() / max((~flag_gal).sum() + w * (~flag_imp).sum(), 1e-12)),
    )
    metrics["ood/completeness"], metrics["ood/purity"] = at
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(completeness, purity, "-", label="threshold scan")
    ax.plot(
        *at, "o", color="C3", label=f"stored threshold {threshold:.3g} (keep {float(layer.keep.numpy()):.0%})"
    )
    ax.set_xlabel("completeness: share of test galaxies eligible")
    ax.set_ylabel("purity: galaxies among the eligible (1:1 mix)")
    ax.set_title("Eligibility flag: purity vs completeness")
    ax.legend()
    return metrics, fig
