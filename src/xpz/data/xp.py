"""The Gaia DR3 XP instrument model, from the files gaiaxpy ships.

Gaia DR3 publishes each BP and RP mean spectrum as 55 coefficients of a set of Hermite basis
functions of pseudo-wavelength u (the *internal* calibration, in electrons per second). This
module evaluates those bases at the 186 kept pixels of :mod:`xpz.spectra` and turns coefficients
into the dataset's fluxes. The real-data importer (archive ``xp_continuous_mean_spectrum``) and the
synthetic generator both go through :func:`coefficients_to_fluxes`, so imported and synthetic
fluxes share one grid and one unit.

Pixels
    SMSgen samples each band at 120 pixels of width 1/3 pseudo-wavelength unit. The default
    ``mode="integrated"`` gives each pixel the *mean* of the continuous spectrum over its width
    (5-point Gauss-Legendre quadrature over [u - 1/6, u + 1/6]); ``mode="point"`` evaluates the
    spectrum at the pixel centre, exactly what ``gaiaxpy.convert(sampling=...)`` returns at the
    same positions. Averaging keeps the unit of ``gaiaxpy.convert`` and differs from point
    sampling by < ~1 % of the peak flux (the pixel box barely touches the 55 bases' resolution).

Units
    Electrons per second per unit pseudo-wavelength (the unit of ``gaiaxpy.convert``'s ``flux``),
    i.e. Gaia's internally calibrated flux scale.

The design matrices come from gaiaxpy's own parse of its shipped basis configuration, evaluated as
gaiaxpy's converter does (vectorised), and are cached; tests/test_xp.py checks them against
``gaiaxpy.convert``.

Import gaiaxpy only via :mod:`xpz._gaiaxpy` (it flips matplotlib's usetex on import).
"""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache
from typing import Literal

import numpy as np

from xpz.spectra import FLUX_DTYPE, N_BP, N_COEFFS, N_FLUX, kept_pwl

PixelMode = Literal["integrated", "point"]
BANDS = ("bp", "rp")
PIXEL_WIDTH = 1.0 / 3.0  # pseudo-wavelength units
_N_QUAD = 5  # Gauss-Legendre nodes per pixel in integrated mode

# DR3 external-calibration models shipped with gaiaxpy (the ones gaiaxpy.calibrate uses).
EXTERNAL_MODELS = {"bp": "bpC03_v375wi", "rp": "rpC03_v142r"}
TELESCOPE_PUPIL_AREA_M2 = 0.7278  # gaiaxpy.core.satellite.TELESCOPE_PUPIL_AREA


def _check_mode(mode: str) -> None:
    if mode not in ("integrated", "point"):
        raise ValueError(f"mode must be 'integrated' or 'point', got {mode!r}")


@lru_cache(maxsize=1)
def _bases_config():
    from xpz._gaiaxpy import gaiaxpy  # noqa: F401, I001  (first: it undoes gaiaxpy's import side effects)
    from gaiaxpy.config.paths import hermite_bases_file
    from gaiaxpy.converter.config import parse_config

    return parse_config(hermite_bases_file)


def basis_functions(band: str, pwl: np.ndarray) -> np.ndarray:
    """The 55 internal DR3 basis functions of `band` at pseudo-wavelengths `pwl`: (55, len(pwl)).

    The configuration (pseudo-wavelength range, normalised range, dimension and transformation
    matrix of the Hermite functions) is gaiaxpy's own parse of its shipped
    ``OptimisedCalibratedBases_BpId32_RpId37_withNormalisation.xml``; the evaluation is
    ``gaiaxpy.spectrum.sampled_basis_functions.populate_design_matrix`` (what
    ``gaiaxpy.convert`` runs), vectorised: orthonormal Hermite functions
    psi_n(x) = (2^n n! sqrt(pi))^-1/2 exp(-x^2/2) H_n(x) by their stable recurrence at
    x = u * scale + offset, then ``transformationMatrix @ psi`` (agrees with gaiaxpy's
    per-point loop to ~1e-14; tests/test_xp.py checks the fluxes against ``gaiaxpy.convert`` to
    1e-6 of the peak).
    """
    if band not in BANDS:
        raise ValueError(f"band must be 'bp' or 'rp', got {band!r}")
    from gaiaxpy.converter.config import get_bands_config

    conf = getattr(get_bands_config(_bases_config()), f"{band}Config")
    (nr_lo, nr_hi), (r_lo, r_hi) = conf.normalizedRange, conf.range
    scale = (nr_hi - nr_lo) / (r_hi - r_lo)
    offset = nr_lo - r_lo * scale
    x = np.asarray(pwl, dtype=float).ravel() * scale + offset
    dim = int(conf.dimension)
    psi = hermite_functions(dim, x)
    transform = np.asarray(conf.transformationMatrix, dtype=float).reshape(
        dim, int(conf.transformedSetDimension)
    )
    return transform @ psi


def hermite_functions(n_functions: int, x: np.ndarray) -> np.ndarray:
    """Orthonormal Hermite functions psi_0..psi_{n-1} at x: (n_functions, len(x))."""
    x = np.asarray(x, dtype=float)
    psi = np.empty((n_functions, x.size))
    psi[0] = np.pi**-0.25 * np.exp(-(x**2) / 2.0)
    if n_functions > 1:
        psi[1] = np.sqrt(2.0) * x * psi[0]
    for n in range(2, n_functions):
        psi[n] = np.sqrt(2.0 / n) * x * psi[n - 1] - np.sqrt((n - 1) / n) * psi[n - 2]
    return psi


@lru_cache(maxsize=4)
def _design_matrix_cached(band: str, mode: str) -> np.ndarray:
    centres = kept_pwl()[band]
    if mode == "point":
        dm = basis_functions(band, centres)
    else:
        nodes, weights = np.polynomial.legendre.leggauss(_N_QUAD)
        offsets = nodes * PIXEL_WIDTH / 2.0
        sub = (centres[:, None] + offsets[None, :]).ravel()
        dm_sub = basis_functions(band, sub).reshape(N_COEFFS, centres.size, _N_QUAD)
        dm = dm_sub @ (weights / weights.sum())
    dm = np.ascontiguousarray(dm, dtype=np.float64)
    dm.setflags(write=False)
    return dm


def design_matrix(band: str, mode: PixelMode = "integrated") -> np.ndarray:
    """Cached (55, n_kept) matrix: coefficients @ matrix -> the band's kept-pixel fluxes (read-only)."""
    _check_mode(mode)
    if band not in BANDS:
        raise ValueError(f"band must be 'bp' or 'rp', got {band!r}")
    return _design_matrix_cached(band, mode)


@lru_cache(maxsize=2)
def _block_design_matrix(mode: PixelMode) -> np.ndarray:
    """(110, 186) block-diagonal matrix: [bp_coeffs, rp_coeffs] @ M -> the 186 fluxes."""
    m = np.zeros((2 * N_COEFFS, N_FLUX))
    m[:N_COEFFS, :N_BP] = design_matrix("bp", mode)
    m[N_COEFFS:, N_BP:] = design_matrix("rp", mode)
    m.setflags(write=False)
    return m


def combined_design_matrix(mode: PixelMode = "integrated") -> np.ndarray:
    """Cached (110, 186) block-diagonal matrix for [bp (55) | rp (55)] coefficient rows (read-only)."""
    _check_mode(mode)
    return _block_design_matrix(mode)


def _check_coefficients(name: str, a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == N_COEFFS:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != N_COEFFS:
        raise ValueError(
            f"{name} must have shape (n, {N_COEFFS}) (one row of {N_COEFFS} DR3 XP coefficients "
            f"per source), got {np.shape(a)}"
        )
    return arr


def coefficients_to_fluxes(
    bp_coefficients: np.ndarray,
    rp_coefficients: np.ndarray,
    mode: PixelMode = "integrated",
) -> np.ndarray:
    """Gaia DR3 XP continuous coefficients -> the dataset's (n, 186) float32 fluxes (80 BP, 106 RP).

    `bp_coefficients` and `rp_coefficients` are (n, 55) arrays of the archive's
    ``xp_continuous_mean_spectrum`` ``bp_coefficients`` / ``rp_coefficients`` (a single 1-D row of
    55 is accepted as n = 1). Units: e-/s per unit pseudo-wavelength (see the module docstring).
    Raises ValueError naming the expected shape (n, 55) for anything else.
    """
    _check_mode(mode)
    bp = _check_coefficients("bp_coefficients", bp_coefficients)
    rp = _check_coefficients("rp_coefficients", rp_coefficients)
    if bp.shape[0] != rp.shape[0]:
        raise ValueError(
            f"bp_coefficients and rp_coefficients must both have shape (n, {N_COEFFS}) with the same n, "
            f"got {bp.shape} and {rp.shape}"
        )
    out = np.empty((bp.shape[0], N_FLUX), dtype=np.float64)
    out[:, :N_BP] = bp @ design_matrix("bp", mode)
    out[:, N_BP:] = rp @ design_matrix("rp", mode)
    return out.astype(FLUX_DTYPE)


# --- external calibration (absolute SED <-> coefficients), used by the synthetic generator ---


@lru_cache(maxsize=2)
def _external_model(band: str):
    from xpz._gaiaxpy import gaiaxpy  # noqa: F401, I001  (first: it undoes gaiaxpy's import side effects)
    from gaiaxpy.calibrator.external_instrument_model import ExternalInstrumentModel
    from gaiaxpy.config.paths import config_path

    stem = f"{config_path}/{EXTERNAL_MODELS[band]}"
    with contextlib.redirect_stdout(io.StringIO()):  # gaiaxpy prints "Reading input file..."
        return ExternalInstrumentModel.from_config_csv(
            f"{stem}_dispersion.csv", f"{stem}_response.csv", f"{stem}_bases.csv"
        )


def external_photon_matrix(band: str, wavelength_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The DR3 external calibration of `band` on a wavelength grid, in the photon domain.

    Returns ``(H, r)``: `H` (55, n_wl) such that ``coefficients @ H`` is the photon spectrum the
    instrument model associates with the coefficients, and `r` (n_wl,) the conversion from an SED
    in W m^-2 nm^-1 to that photon scale: ``photons(lambda) = SED(lambda) * r(lambda)`` with
    ``r = pupil_area * response(lambda) * lambda / (h c)`` (zero where the response is zero).
    This is ``SampledBasisFunctions.from_external_instrument_model`` of gaiaxpy (what
    ``gaiaxpy.calibrate`` uses) with its 1/r normalisation split off, so that an SED can be
    inverted to coefficients by least squares in the photon domain.
    """
    eim = _external_model(band)
    b = eim.bases
    wl = np.asarray(wavelength_nm, dtype=float)
    scale = (b["normRangeMax"] - b["normRangeMin"]) / (b["pwlRangeMax"] - b["pwlRangeMin"])
    offset = b["normRangeMin"] - b["pwlRangeMin"] * scale
    x = np.asarray(eim.wl_to_pwl(wl), dtype=float) * scale + offset
    psi = hermite_functions(int(b["nInverseBasesCoefficients"]), x)  # gaiaxpy's _hermite_function
    h = b["transformationMatrix"] @ (b["inverseBasesCoefficients"] @ psi)
    response = np.asarray(eim.get_response(wl), dtype=float)
    response = np.where(response > 0, response, 0.0)
    hc = 1.0e9 * 299792458.0 * 6.62607015e-34  # J nm
    r = TELESCOPE_PUPIL_AREA_M2 * response * wl / hc
    return h, r
