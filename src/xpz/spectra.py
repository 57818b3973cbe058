"""The 186-sample Gaia XP grid: the one place that defines pixels, wavelengths and column names.

SMSgen samples each band at 120 pixels of width 1/3 pseudo-wavelength unit. The seed's
dataset keeps BP pixels 34..113 (366-637 nm) and RP pixels 4..109 (634-996 nm): 80 + 106 = 186
fluxes, BP first. Everything that reads, writes, generates or predicts spectra imports the
constants below instead of re-deriving them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

N_PIXELS_PER_BAND = 120
BP_KEEP = (34, 114)  # half-open pixel range kept for BP (drops first 34, last 6)
RP_KEEP = (4, 110)  # half-open pixel range kept for RP (drops first 4, last 10)
N_BP = BP_KEEP[1] - BP_KEEP[0]
N_RP = RP_KEEP[1] - RP_KEEP[0]
N_FLUX = N_BP + N_RP
N_COEFFS = 55  # Hermite basis functions per band in Gaia DR3 XP continuous spectra

ID_COLUMN = "source_id"
TARGET_COLUMN = "z"
FLUX_COLUMNS: tuple[str, ...] = tuple(f"flux_{i:03d}" for i in range(N_FLUX))
BP_COLUMNS = FLUX_COLUMNS[:N_BP]
RP_COLUMNS = FLUX_COLUMNS[N_BP:]
DATASET_COLUMNS: tuple[str, ...] = (ID_COLUMN, TARGET_COLUMN, *FLUX_COLUMNS)
# Optional: the galaxy physics a synthetic spectrum was made with (`xpz.data.synthetic`); real data
# has none. When present it sits after the target: source_id, z, family, flux_000..flux_185.
FAMILY_COLUMN = "family"
FAMILIES: tuple[str, ...] = ("kcorrect", "bagpipes", "cosmos", "cww")  # cww: held out (xpz.data.empirical)
FLUX_DTYPE = np.float32

assert N_BP == 80 and N_RP == 106 and N_FLUX == 186


def bp_pixel_pwl(i: np.ndarray | int) -> np.ndarray:
    """Pseudo-wavelength of BP pixel centre(s) i (0..119); BP wavelength grows as u falls."""
    return 41.45 + (34 - np.asarray(i, dtype=float)) / 3.0


def rp_pixel_pwl(i: np.ndarray | int) -> np.ndarray:
    """Pseudo-wavelength of RP pixel centre(s) i (0..119)."""
    return 47.29 + (np.asarray(i, dtype=float) - 109) / 3.0


def kept_pwl() -> dict[str, np.ndarray]:
    """Pseudo-wavelength centres of the kept pixels, per band, in column order."""
    return {
        "bp": bp_pixel_pwl(np.arange(*BP_KEEP)),
        "rp": rp_pixel_pwl(np.arange(*RP_KEEP)),
    }


@lru_cache(maxsize=1)
def wavelengths_nm() -> np.ndarray:
    """Wavelength (nm) of each of the 186 flux columns, from gaiaxpy's DR3 dispersion model."""
    from xpz._gaiaxpy import pwl_to_wl

    pwl = kept_pwl()
    return np.concatenate([pwl_to_wl("bp", pwl["bp"]), pwl_to_wl("rp", pwl["rp"])])


def flux_matrix(df: pd.DataFrame) -> np.ndarray:
    """The (n, 186) float32 flux array of a dataset frame, in grid order."""
    return np.ascontiguousarray(df.loc[:, list(FLUX_COLUMNS)].to_numpy(dtype=FLUX_DTYPE))


# Why a spectrum with a total flux <= 0 gets no redshift: the network's input is the spectrum divided by
# its total flux (`xpz.model.scaling`), undefined there. The one definition, used by `xpz predict`
# (a per-row `reject_reason`) and by the served model (`xpz.tracking.pyfunc.as_flux_array`, HTTP 400).
NO_TOTAL_FLUX_REASON = "total flux <= 0 (no usable spectrum)"


def nonpositive_total(fluxes: np.ndarray) -> np.ndarray:
    """(n,) bool: the rows of an (n, 186) flux array whose total flux (sum over the 186 samples, in
    float64) is <= 0. Rows with a non-finite value are False here (they are refused as non-finite)."""
    totals = np.asarray(fluxes, dtype=np.float64).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.asarray(totals <= 0, dtype=bool)
