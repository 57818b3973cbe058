"""The generated galaxies for a likelihood: their fluxes on the directions the XP sampling resolves,
with the covariance of the generator's noise there (what Gaia's archive publishes per source as
coefficient covariances). `benchmarks/bench_oracle.py` fits them; the generator itself
(`xpz.data.synthetic`) is the one place the physics and the noise are defined, and this module
follows its random streams so that its galaxies are `generate(cfg)`'s."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from xpz.config import DataConfig
from xpz.data.sed import FINE_PWL, instrument
from xpz.data.synthetic import (
    BACKGROUND,
    BLOCK_SIZE,
    GAIN_SIGMA,
    NOISE_BOOST,
    OFFSET_SIGMA,
    T_EXPOSURE_S,
    _block_families,
    _block_noise,
    _block_physics,
    _draw_z,
    _rng,
    _transits,
)
from xpz.spectra import FLUX_DTYPE, N_BP, N_FLUX

SPAN_TOL = 1e-6  # singular values (relative) of the sampling kept: float32 fluxes resolve no smaller


@lru_cache(maxsize=1)
def flux_span() -> tuple[np.ndarray, np.ndarray]:
    """Per band, the (n_band, r) map from sampled fluxes to their coordinates on the span the
    sampling resolves: the 55 Hermite bases sampled at 80 BP / 106 RP pixels (pixel-integrated)
    attenuate the high orders (singular values from 1 to 1e-16), and float32 fluxes keep only the
    directions above SPAN_TOL (r = 40 BP, 49 RP). Orthogonal coordinates scaled by the inverse
    singular values, so a flux x @ design matrix maps back to x on those directions."""
    from xpz.data import xp

    maps = []
    for band in ("bp", "rp"):
        _, s, vt = np.linalg.svd(xp.design_matrix(band), full_matrices=False)
        keep = s > SPAN_TOL * s[0]
        maps.append(vt[keep].T / s[keep])
    return maps[0], maps[1]


def _block_covariance(cfg: DataConfig, block: int, sed: np.ndarray) -> list[np.ndarray]:
    """Per band, (n, r, r): the covariance of `_block_noise`'s noise on the `flux_span` coordinates
    (the Poisson + background term with each source's transits, the background offset, the
    calibration gain); the bands' noises are independent."""
    mod = instrument()
    n = sed.shape[0]
    n_tr = _transits(_rng(cfg.seed, block, 2), n)
    du = float(FINE_PWL[1] - FINE_PWL[0])
    cols = (slice(0, N_BP), slice(N_BP, N_FLUX))
    out = []
    for b, span in enumerate(flux_span()):
        fine = mod.fine_to_flux[b] @ span  # (n_fine, r)
        var = (np.clip(sed @ mod.sed_to_fine[b], 0.0, None) + BACKGROUND) / (
            T_EXPOSURE_S * du * n_tr[:, None]
        )
        cov = np.einsum("nf,fi,fj->nij", var * NOISE_BOOST**2, fine, fine)
        offset = mod.offset_flux[b] @ span
        cov += OFFSET_SIGMA**2 * np.outer(offset, offset)[None]
        gain = (mod.gain_shapes[b][None] * (sed @ mod.sed_to_flux[:, cols[b]])[:, None, :]) @ span
        cov += GAIN_SIGMA**2 * np.einsum("nki,nkj->nij", gain, gain)
        out.append(cov * cfg.noise**2)
    return out


def likelihood_view(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The galaxies of `generate(cfg)` for a likelihood: their float32 fluxes (as the dataset stores
    them) on the `flux_span` coordinates of both bands (`data`, (n, r_BP + r_RP)), the covariance of
    the generator's noise there (`covariance`, (n, r, r), block diagonal; what Gaia's archive gives
    per source as bp/rp_coefficient_covariances), beside the fluxes themselves (`flux`, (n, 186)),
    `z`, `g` (apparent G, Vega) and `family`
    (index into FAMILIES). A model spectrum's `data` is `sed @ instrument().sed_to_flux` mapped the
    same way (`to_span`). With cfg.noise == 0 the covariance is zero. For benchmarks/bench_oracle.py."""
    mod = instrument()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("data", "covariance", "flux", "z", "g", "family")}
    r = [span.shape[1] for span in flux_span()]
    for block in range(-(-cfg.n_galaxies // BLOCK_SIZE)):
        keep = min(BLOCK_SIZE, cfg.n_galaxies - block * BLOCK_SIZE)
        z = _draw_z(_rng(cfg.seed, block, 0), BLOCK_SIZE, cfg.z_max)
        family = _block_families(cfg, block, BLOCK_SIZE)
        sed, g = _block_physics(cfg, block, BLOCK_SIZE, z, family)
        flux = (sed @ mod.sed_to_flux + _block_noise(cfg, block, sed)).astype(FLUX_DTYPE).astype(np.float64)
        cov = np.zeros((keep, sum(r), sum(r)))
        if cfg.noise > 0:
            bp, rp = _block_covariance(cfg, block, sed[:keep])
            cov[:, : r[0], : r[0]], cov[:, r[0] :, r[0] :] = bp, rp
        for key, value in zip(
            parts, (to_span(flux[:keep]), cov, flux[:keep], z[:keep], g[:keep], family[:keep]), strict=True
        ):
            parts[key].append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


def to_span(flux: np.ndarray) -> np.ndarray:
    """(n, 186) fluxes -> (n, r_BP + r_RP) `flux_span` coordinates."""
    bp, rp = flux_span()
    return np.concatenate([flux[:, :N_BP] @ bp, flux[:, N_BP:] @ rp], axis=1)


__all__ = ["SPAN_TOL", "flux_span", "likelihood_view", "to_span"]
