"""Non-galaxies through the same instrument model as the galaxies: the eligibility flag's test set.

Every SED is built on the observed-frame grid of `xpz.data.sed.instrument()`, scaled to an
apparent Gaia G drawn uniformly in the galaxies' range [g_min, g_max] (so brightness alone does
not give them away), mapped to the 186 fluxes by `sed_to_flux` and given the galaxies' noise
(`xpz.data.synthetic`'s per-transit Poisson + background + offset + gain model). Kinds:

- ``blackbody``: Planck B_lambda(T), T log-uniform in 3,000-30,000 K (stars without dust);
- ``blackbody_dust``: the same reddened by Calzetti (2000) dust, E(B-V) uniform in 0.1-1.0;
- ``quasar``: a power law f_nu ~ nu^a (a ~ N(-0.5, 0.3)) with broad (FWHM 5,000 km/s) Ly-alpha,
  C IV, C III], Mg II, H-beta and H-alpha lines (rest equivalent widths 10, 3, 2, 3, 6, 30 nm;
  Vanden Berk et al. 2001), at z uniform in 0.1-3;
- ``noise``: no source, only the background noise;
- ``band_zeroed`` / ``band_scaled``: a galaxy of `xpz.data.synthetic` with its BP or RP fluxes set
  to 0, or multiplied by 0.5 or 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xpz.config import DataConfig
from xpz.data.sed import LNL_STEP, _calzetti, instrument
from xpz.data.synthetic import G_AB_TO_VEGA, _block_noise, generate
from xpz.spectra import FLUX_COLUMNS, FLUX_DTYPE, ID_COLUMN, N_BP, N_FLUX

KINDS = ("blackbody", "blackbody_dust", "quasar", "noise", "band_zeroed", "band_scaled")
H_C_OVER_K_NM = 1.438777e7  # h c / k in nm K
QSO_LINES_NM = np.array([121.6, 154.9, 190.9, 279.8, 486.1, 656.3])
QSO_EW_NM = np.array([10.0, 3.0, 2.0, 3.0, 6.0, 30.0])
QSO_FWHM_KMS = 5000.0
C_KMS = 299792.458


def observed_wavelengths() -> np.ndarray:
    """The instrument's observed-frame wavelength grid (nm)."""
    mod = instrument()
    return np.exp(mod.ln_obs0 + LNL_STEP * np.arange(mod.n_obs))


def blackbody(temperature: np.ndarray, lam_nm: np.ndarray) -> np.ndarray:
    """(n, n_lam) Planck B_lambda shapes (arbitrary units) for temperatures in K."""
    t = np.asarray(temperature, float)[:, None]
    return lam_nm[None, :] ** -5 / np.expm1(H_C_OVER_K_NM / (lam_nm[None, :] * t))


def quasar(rng: np.random.Generator, n: int, lam_nm: np.ndarray) -> np.ndarray:
    """(n, n_lam) quasar-like SEDs: power-law continuum with broad emission lines (see module doc)."""
    z = rng.uniform(0.1, 3.0, n)[:, None]
    slope = rng.normal(-0.5, 0.3, n)[:, None]
    rest = lam_nm[None, :] / (1.0 + z)
    cont = (rest / 300.0) ** (-2.0 - slope)  # f_lambda ~ lambda^(-2 - a) for f_nu ~ nu^a
    sed = cont.copy()
    for centre, ew in zip(QSO_LINES_NM, QSO_EW_NM):
        sigma = centre * QSO_FWHM_KMS / C_KMS / 2.3548
        c_at_line = (centre / 300.0) ** (-2.0 - slope)
        sed += ew * c_at_line * np.exp(-0.5 * ((rest - centre) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return sed


def _to_fluxes(sed: np.ndarray, cfg: DataConfig, rng: np.random.Generator, block: int) -> np.ndarray:
    """Scale SEDs to a uniform G in [g_min, g_max], map to fluxes and add the galaxies' noise."""
    mod = instrument()
    g_app = rng.uniform(cfg.g_min, cfg.g_max, len(sed))
    g_unit = -2.5 * np.log10(np.maximum(sed @ mod.g_weights, 1e-300)) + G_AB_TO_VEGA
    sed = sed * (10.0 ** (-0.4 * (g_app - g_unit)))[:, None]
    return sed @ mod.sed_to_flux + _block_noise(cfg, block, sed)


def blackbody_fluxes(
    temperature: np.ndarray, ebv: np.ndarray, cfg: DataConfig | None = None, seed: int = 7
) -> np.ndarray:
    """(n, 186) fluxes of blackbodies at `temperature` (K) reddened by Calzetti dust `ebv` (E(B-V), mag;
    0 for none), each at a G drawn uniformly in [cfg.g_min, cfg.g_max], with cfg.noise times the
    galaxies' noise (0: noise-free). For maps of the eligibility flag over (T, E(B-V))."""
    cfg = cfg or DataConfig()
    rng = np.random.default_rng(seed)
    lam = observed_wavelengths()
    t, e = np.broadcast_arrays(np.asarray(temperature, float), np.asarray(ebv, float))
    sed = blackbody(t, lam) * 10.0 ** (-0.4 * e[:, None] * _calzetti(lam)[None, :])
    return _to_fluxes(sed, cfg, rng, 1001)


def generate_impostors(n_per_kind: int, cfg: DataConfig | None = None, seed: int = 7) -> pd.DataFrame:
    """`n_per_kind` spectra of each of `KINDS`: DataFrame[source_id, kind, flux_000..flux_185].

    `cfg` gives the magnitude range and noise scale (default `DataConfig()`); the same `seed`
    gives the same spectra. source_ids are 1.. in order (not Gaia ids)."""
    cfg = (cfg or DataConfig()).model_copy(update={"seed": seed})
    rng = np.random.default_rng(seed)
    lam = observed_wavelengths()
    n = n_per_kind
    parts: dict[str, np.ndarray] = {}
    temps = np.exp(rng.uniform(np.log(3000.0), np.log(30000.0), n))
    parts["blackbody"] = _to_fluxes(blackbody(temps, lam), cfg, rng, 1001)
    ebv = rng.uniform(0.1, 1.0, n)[:, None]
    dusty = blackbody(np.exp(rng.uniform(np.log(3000.0), np.log(30000.0), n)), lam)
    dusty = dusty * 10.0 ** (-0.4 * ebv * _calzetti(lam)[None, :])
    parts["blackbody_dust"] = _to_fluxes(dusty, cfg, rng, 1002)
    parts["quasar"] = _to_fluxes(quasar(rng, n, lam), cfg, rng, 1003)
    parts["noise"] = _block_noise(cfg, 1004, np.zeros((n, instrument().n_obs)))
    galaxies = [generate(cfg.model_copy(update={"n_galaxies": n, "seed": seed + k})) for k in (1, 2)]
    zeroed = np.array(galaxies[0][list(FLUX_COLUMNS)], dtype=np.float64)
    bp = rng.uniform(size=n) < 0.5
    zeroed[bp, :N_BP] = 0.0
    zeroed[~bp, N_BP:] = 0.0
    parts["band_zeroed"] = zeroed
    scaled = np.array(galaxies[1][list(FLUX_COLUMNS)], dtype=np.float64)
    factor = np.where(rng.uniform(size=n) < 0.5, 0.5, 2.0)[:, None]
    bp = rng.uniform(size=n) < 0.5
    scaled[bp, :N_BP] *= factor[bp]
    scaled[~bp, N_BP:] *= factor[~bp]
    parts["band_scaled"] = scaled
    frames = []
    for kind in KINDS:
        df = pd.DataFrame(parts[kind].astype(FLUX_DTYPE), columns=list(FLUX_COLUMNS))
        df.insert(0, "kind", kind)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, ID_COLUMN, np.arange(1, len(out) + 1, dtype=np.int64))
    assert out.shape[1] == N_FLUX + 2
    return out
