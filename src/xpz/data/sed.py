"""The spectral set-up of the synthetic generator: SED templates, dust, the G passband, and the
linear map from an observed-frame SED (W m^-2 nm^-1) to the 186 XP fluxes through gaiaxpy's
external calibration (`xpz.data.xp`). Built once per process (`instrument()`, cached).

Shared by `xpz.data.synthetic` (galaxies) and anything else that needs spectra "as Gaia XP sees
them" (e.g. stars or quasars for out-of-distribution checks). See `synthetic`'s module doc for the
physics and shared/design/synthetic-gaia-xp.md for the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from xpz.spectra import N_BP, N_FLUX

Z_LIMIT = 2.0  # largest z_max the SED grids support
LF_M_STAR = -21.2
LF_ALPHA = -1.1
PLANCK18_H0 = 67.66  # km/s/Mpc
PLANCK18_OM0 = 0.30966
LNL_STEP = 0.0025  # ln(lambda) step of the SED grids
OBS_RANGE_NM = (320.0, 1100.0)
FINE_PWL = np.arange(0.125, 60.0, 0.25)  # fine pseudo-wavelength grid for the noise model


@dataclass(frozen=True)
class Instrument:
    ln_obs0: float
    n_obs: int
    k0: int  # rest-grid index of the first observed wavelength at z = 0
    templates: np.ndarray  # (6, n_rest) rest-frame SEDs, unit mean over 400-700 nm
    template_lines: np.ndarray  # (6, n_rest) the emission-line part of `templates` (same units)
    calzetti: np.ndarray  # (n_rest,) k(lambda)
    lam_rest: np.ndarray  # (n_rest,) rest-frame wavelengths (nm)
    g_weights: np.ndarray  # (n_obs,) SED @ g_weights = AB-normalised G flux ratio
    sed_to_flux: np.ndarray  # (n_obs, 186) SED (W m^-2 nm^-1) -> fluxes
    sed_to_fine: tuple[np.ndarray, np.ndarray]  # per band (n_obs, n_fine) SED -> flux on fine grid
    fine_to_flux: tuple[np.ndarray, np.ndarray]  # per band (n_fine, n_band) fine noise -> fluxes
    offset_flux: tuple[np.ndarray, np.ndarray]  # per band (n_band,) unit background offset
    gain_shapes: tuple[np.ndarray, np.ndarray]  # per band (3, n_band) smooth gain-error shapes
    lf_grid: np.ndarray  # absolute magnitudes
    lf_cdf: np.ndarray
    dm_z: np.ndarray  # redshift grid for the distance modulus
    dm: np.ndarray


def _templates_path() -> Path:
    """kcorrect's template folder, found without importing kcorrect (its import is slow)."""
    import importlib.util

    spec = importlib.util.find_spec("kcorrect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("kcorrect is not installed: it ships the galaxy templates")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "templates"


def distance_modulus(z: np.ndarray) -> np.ndarray:
    """Planck18 distance modulus (flat LCDM, Om0 = 0.30966, H0 = 67.66; radiation neglected).

    Computed here (trapezoid on a fine grid) because importing astropy.cosmology costs ~4 s of
    set-up; it agrees with ``astropy.cosmology.Planck18.distmod`` to < 0.002 mag for z <= 0.7
    (checked in tests/test_synthetic.py).
    """
    zg = np.linspace(0.0, 2.5, 25001)
    inv_e = 1.0 / np.sqrt(PLANCK18_OM0 * (1.0 + zg) ** 3 + (1.0 - PLANCK18_OM0))
    dc = np.concatenate([[0.0], np.cumsum(0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(zg))])
    z = np.asarray(z, dtype=float)
    d_l_mpc = (1.0 + z) * np.interp(z, zg, dc) * 299792.458 / PLANCK18_H0
    return 5.0 * np.log10(np.maximum(d_l_mpc, 1e-10)) + 25.0


def _read_template(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import fitsio

    d = fitsio.read(str(path), "FLUX")
    wave = np.asarray(d["wave"][0], dtype=float) / 10.0  # Angstrom -> nm
    flux = np.atleast_2d(np.asarray(d["flux"][0], dtype=float))
    return wave, flux


def _calzetti(lam_nm: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) k(lambda), R_V = 4.05 (extrapolated linearly outside 120-2200 nm)."""
    x = np.clip(lam_nm, 120.0, 2200.0) / 1000.0  # micron
    blue = 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + 4.05
    red = 2.659 * (-1.857 + 1.040 / x) + 4.05
    return np.where(x < 0.63, blue, red)


def attenuation_curve(
    lam_nm: np.ndarray, k_calzetti: np.ndarray, delta: np.ndarray, bump: np.ndarray
) -> np.ndarray:
    """k(lambda) = A(lambda) / E(B-V) of a modified Calzetti law (Noll et al. 2009; Salim et al. 2018):

        k = (k_Calzetti(lambda) + D(lambda)) (lambda / 550 nm)^delta,
        D = E_b (lambda dl)^2 / ((lambda^2 - l0^2)^2 + (lambda dl)^2),  l0 = 217.5 nm, dl = 35 nm.

    delta < 0 steepens the law towards SMC-like curves, delta > 0 flattens it; E_b (`bump`) is the
    2175 A bump's amplitude (0: none; ~3: a Milky-Way-like bump). Shapes broadcast: lam_nm and
    k_calzetti (n, k) or (k,), delta and bump (n, 1) or scalars.
    """
    l0, dl = 217.5, 35.0
    drude = bump * (lam_nm * dl) ** 2 / ((lam_nm**2 - l0**2) ** 2 + (lam_nm * dl) ** 2)
    return (k_calzetti + drude) * (lam_nm / 550.0) ** delta


def _split_lines(flux: np.ndarray, width: int = 21, floor: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(continuum, lines) of noise-free template spectra on their native grid: the continuum is a
    running median over `width` pixels (~10 nm for kcorrect), the lines what rises more than `floor`
    (fractional) above it. Lets the generator vary line strength independently of the continuum."""
    from scipy.ndimage import median_filter

    cont = median_filter(flux, size=(1, width), mode="nearest")
    excess = flux - cont
    lines = np.where(excess > floor * np.abs(cont), excess, 0.0)
    return flux - lines, lines


def _smooth_resample(wave: np.ndarray, flux: np.ndarray, ln_grid: np.ndarray) -> np.ndarray:
    """Gaussian-smooth (sigma = one grid step in ln lambda) then resample onto ln_grid."""
    from scipy.ndimage import gaussian_filter1d

    lnw = np.log(wave)
    step = float(np.median(np.diff(lnw)))
    sm = gaussian_filter1d(flux, sigma=LNL_STEP / step, axis=-1, mode="nearest")
    return np.stack([np.interp(ln_grid, lnw, f) for f in sm])


def _g_weights(lam_nm: np.ndarray) -> np.ndarray:
    """w with SED @ w = 10**(-0.4 G_AB) for an SED in W m^-2 nm^-1 on lam_nm."""
    import speclite.filters

    g = speclite.filters.load_filter("gaiadr3-G")
    lam_a = lam_nm * 10.0
    s = np.interp(lam_a, g.wavelength, g.response, left=0.0, right=0.0)
    dlam = np.gradient(lam_nm)
    # AB: f_nu = 3631 Jy -> f_lambda = 3631e-26 W m^-2 Hz^-1 * c / lambda^2 (W m^-2 nm^-1)
    c_nm = 2.99792458e17
    f_ab = 3631e-26 * c_nm / lam_nm**2
    denom = np.sum(f_ab * s * lam_nm * dlam)
    return s * lam_nm * dlam / denom


def _least_squares_map(h: np.ndarray, ridge: float) -> np.ndarray:
    """P (n_wl, 55): photons @ P = argmin_c ||c @ h - photons||^2 + ridge * s_max^2 ||c||^2."""
    gram = h @ h.T
    lam = ridge * np.linalg.eigvalsh(gram).max()
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), h).T


def _grid_shape() -> tuple[float, int, int, int]:
    """(ln of the first observed wavelength, n_obs, k0, n_rest) of the SED grids."""
    ln_obs0 = float(np.log(OBS_RANGE_NM[0]))
    n_obs = int(np.ceil(np.log(OBS_RANGE_NM[1] / OBS_RANGE_NM[0]) / LNL_STEP)) + 1
    k0 = int(np.ceil(np.log(1.0 + Z_LIMIT) / LNL_STEP)) + 2  # room for z <= Z_LIMIT
    return ln_obs0, n_obs, k0, k0 + n_obs + 2


def rest_wavelengths() -> np.ndarray:
    """The rest-frame wavelength grid (nm) on which every galaxy SED template is stored: uniform in
    ln(lambda) (step LNL_STEP), from OBS_RANGE_NM[0] / (1 + Z_LIMIT) to OBS_RANGE_NM[1]."""
    ln_obs0, _, k0, n_rest = _grid_shape()
    return np.exp(ln_obs0 - k0 * LNL_STEP + LNL_STEP * np.arange(n_rest))


@lru_cache(maxsize=1)
def instrument() -> Instrument:
    from xpz.data import xp

    # Observed-frame grid and rest-frame grid share the ln(lambda) step; rest starts k0 steps lower.
    ln_obs0, n_obs, k0, n_rest = _grid_shape()
    lam_rest = rest_wavelengths()
    ln_rest = np.log(lam_rest)
    lam_obs = np.exp(ln_obs0 + LNL_STEP * np.arange(n_obs))

    tdir = _templates_path()
    w0, f0 = _read_template(tdir / "kcorrect-default-v4.fits")
    w1, f1 = _read_template(tdir / "kcorrect-lrg1-v4.fits")
    _, l0 = _split_lines(f0)
    _, l1 = _split_lines(f1)
    templates = np.concatenate([_smooth_resample(w0, f0, ln_rest), _smooth_resample(w1, f1, ln_rest)])
    lines = np.concatenate([_smooth_resample(w0, l0, ln_rest), _smooth_resample(w1, l1, ln_rest)])
    opt = (lam_rest > 400.0) & (lam_rest < 700.0)
    norm = templates[:, opt].mean(axis=1, keepdims=True)
    templates = np.clip(templates / norm, 0.0, None)
    lines = np.clip(np.minimum(lines / norm, templates), 0.0, None)

    # Instrument: SED -> coefficients (photon-domain ridge least squares) -> kept-pixel fluxes.
    sed_to_flux = np.zeros((n_obs, N_FLUX))
    sed_to_fine, fine_to_flux, offset_flux, gain_shapes = [], [], [], []
    cols = {"bp": slice(0, N_BP), "rp": slice(N_BP, N_FLUX)}
    for band in ("bp", "rp"):
        h, r = xp.external_photon_matrix(band, lam_obs)
        sed_to_coef = r[:, None] * _least_squares_map(h, ridge=1e-7)  # (n_obs, 55)
        m = xp.design_matrix(band)  # (55, n_band)
        sed_to_flux[:, cols[band]] = sed_to_coef @ m
        fine = xp.basis_functions(band, FINE_PWL)  # (55, n_fine)
        sed_to_fine.append(sed_to_coef @ fine)
        fine_pinv = np.linalg.pinv(fine.T, rcond=1e-10)  # (55, n_fine): LS fit onto the bases
        fine_to_flux.append(fine_pinv.T @ m)
        # A constant background offset, as the bases represent it, at the kept pixels.
        offset_flux.append(np.ones(FINE_PWL.size) @ fine_to_flux[-1])
        x = np.linspace(-1.0, 1.0, m.shape[1])
        gain_shapes.append(np.stack([np.ones_like(x), x, 1.5 * x**2 - 0.5]))

    # Luminosity function CDF on a grid of absolute magnitudes.
    lf_grid = np.linspace(-27.0, -8.0, 3801)
    t = 10.0 ** (0.4 * (LF_M_STAR - lf_grid))
    phi = t ** (LF_ALPHA + 1.0) * np.exp(-t)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (phi[1:] + phi[:-1]))])
    cdf /= cdf[-1]

    dm_z = np.linspace(1e-5, Z_LIMIT, 4001)
    dm = distance_modulus(dm_z)

    return Instrument(
        ln_obs0=ln_obs0,
        n_obs=n_obs,
        k0=k0,
        templates=templates,
        template_lines=lines,
        calzetti=_calzetti(lam_rest),
        lam_rest=lam_rest,
        g_weights=_g_weights(lam_obs),
        sed_to_flux=sed_to_flux,
        sed_to_fine=tuple(sed_to_fine),
        fine_to_flux=tuple(fine_to_flux),
        offset_flux=tuple(offset_flux),
        gain_shapes=(gain_shapes[0], gain_shapes[1]),
        lf_grid=lf_grid,
        lf_cdf=cdf,
        dm_z=dm_z,
        dm=dm,
    )
