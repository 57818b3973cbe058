"""Dataset summaries and the seed's exploratory figures (its figures 9-11)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from xpz.spectra import N_BP, TARGET_COLUMN, flux_matrix, wavelengths_nm  # noqa: E402

Z_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 0.1),
    (0.1, 0.2),
    (0.2, 0.3),
    (0.3, 0.4),
    (0.4, 0.5),
    (0.5, 0.6),
)


def redshift_statistics(z: np.ndarray) -> dict[str, float]:
    """The statistics the seed quotes for its dataset (section 3.2)."""
    z = np.asarray(z, dtype=float)
    return {
        "count": float(z.size),
        "mean": float(np.mean(z)),
        "median": float(np.median(z)),
        "std": float(np.std(z)),
        "skewness": float(stats.skew(z)),
        "p99": float(np.percentile(z, 99)),
        "min": float(np.min(z)),
        "max": float(np.max(z)),
    }


def mean_spectra_by_range(df: pd.DataFrame, per_range: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean flux of up to `per_range` random galaxies in each of the seed's six redshift ranges."""
    rng = np.random.default_rng(seed)
    z = df[TARGET_COLUMN].to_numpy()
    out: dict[str, np.ndarray] = {}
    for lo, hi in Z_RANGES:
        inside = np.nonzero((z >= lo) & ((z < hi) if hi < Z_RANGES[-1][1] else (z <= hi)))[0]
        if inside.size == 0:
            continue
        pick = rng.choice(inside, size=min(per_range, inside.size), replace=False)
        out[f"{lo:.1f}-{hi:.1f}"] = flux_matrix(df.iloc[pick]).mean(axis=0)
    return out


def plot_dataset(df: pd.DataFrame, out_dir: Path, n_examples: int = 4, seed: int = 0) -> list[Path]:
    """Write redshift_hist.png, example_spectra.png and mean_spectra.png; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wl = wavelengths_nm()
    z = df[TARGET_COLUMN].to_numpy()
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(z, bins=np.arange(0, 0.61, 0.01).tolist(), color="tab:blue")
    ax.set(
        xlabel="redshift z", ylabel="galaxies per 0.01", title=f"Redshift distribution ({len(z):,} galaxies)"
    )
    paths.append(_save(fig, out_dir / "redshift_hist.png"))

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(df), size=min(n_examples, len(df)), replace=False)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i in rows:
        flux = flux_matrix(df.iloc[[i]])[0]
        line = ax.plot(wl[:N_BP], flux[:N_BP], lw=1.2)[0]
        ax.plot(wl[N_BP:], flux[N_BP:], lw=1.2, color=line.get_color(), label=f"z = {z[i]:.3f}")
    ax.axvspan(wl[N_BP - 1], wl[N_BP], color="0.85")
    ax.set(xlabel="wavelength (nm)", ylabel="flux", title="Random galaxy spectra (BP | RP)")
    ax.legend()
    paths.append(_save(fig, out_dir / "example_spectra.png"))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, mean in mean_spectra_by_range(df, seed=seed).items():
        line = ax.plot(wl[:N_BP], mean[:N_BP], lw=1.2)[0]
        ax.plot(wl[N_BP:], mean[N_BP:], lw=1.2, color=line.get_color(), label=f"z {label}")
    ax.set(xlabel="wavelength (nm)", ylabel="mean flux", title="Mean spectrum per redshift range")
    ax.legend()
    paths.append(_save(fig, out_dir / "mean_spectra.png"))
    return paths


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
