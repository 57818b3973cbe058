"""Galaxy families from the photo-z field's template sets: `cosmos` (trained on) and `cww` (held out).

Why: kcorrect (`xpz.data.sed`) and bagpipes (`xpz.data.sps`) are two model physics. Photometric
redshift codes are run with template sets built from *observed* galaxies, which carry what neither
model has (real mixtures of populations, real dust geometry, real line ratios). Two such sets ship in
the wheel of LSST DESC RAIL (``pz-rail-base``, ``rail/examples_data/estimation_data/data/SED/``,
MIT licence):

- ``cosmos``: the 31 templates of the COSMOS photo-z (LePhare; Ilbert et al. 2009, ApJ 690, 1236):
  7 ellipticals and 12 spirals (S0 to Sdm) of Polletta et al. (2007, ApJ 663, 81), observed
  spectra extended with GRASIL models, and 12 young starbursts (BC03, Bruzual & Charlot 2003).
  It is a training family of the default dataset.
- ``cww``: the 6 templates of BPZ (Benitez 2000, ApJ 536, 571), the observed E, Sbc, Scd and Im of
  Coleman, Wu & Weedman (1980) and the starbursts SB2 and SB3 of Kinney et al. (1996), recalibrated
  by Benitez et al. (2004, ``*_B2004a``). It is **held out**: no default dataset contains it, so
  ``benchmarks/bench_families.py`` can report a family no model was trained or tuned on.

Each template is smoothed and resampled onto the rest-frame grid (`xpz.data.sed.rest_wavelengths`)
and divided by its mean over 400-700 nm, as the kcorrect templates are. The result is a committed
file (`empirical_templates.npz`, float32): generation needs no RAIL. ``python -m
xpz.data.empirical --sed-dir DIR`` rebuilds it from the RAIL SED folder (``pip download
pz-rail-base==2.0.11 --no-deps`` and unzip).

A galaxy of these families is a linear interpolation between two neighbours of the template
sequence (as BPZ interpolates its templates), at a position drawn uniformly along the part of the
sequence that its class takes: red (luminous) galaxies the early types, blue galaxies the later
ones (`RED_RANGE`, `BLUE_RANGE`). Their lines are part of the observed spectra, so line strength
is not varied; the dust law and an extra E(B-V) (as LePhare's COSMOS runs add, Ilbert et al. 2009)
are drawn by `xpz.data.synthetic`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from xpz.data.sed import rest_wavelengths

TEMPLATES_PATH = Path(__file__).with_name("empirical_templates.npz")
SOURCE = "pz-rail-base 2.0.11 wheel, rail/examples_data/estimation_data/data/SED/ (LSST DESC RAIL, MIT)"
# The template sequences, early to late types (the COSMOS list's order and BPZ's CWWSB4 order).
SEQUENCES: dict[str, tuple[str, ...]] = {
    "cosmos": (
        *(f"Ell{k}_A_0" for k in range(1, 8)), "S0_A_0", "Sa_A_0", "Sa_A_1", "Sb_A_0", "Sb_A_1",
        "Sc_A_0", "Sc_A_1", "Sc_A_2", "Sd_A_0", "Sd_A_1", "Sd_A_2", "Sdm_A_0", *(f"SB{k}_A_0" for k in range(12)),
    ),
    "cww": ("El_B2004a", "Sbc_B2004a", "Scd_B2004a", "Im_B2004a", "SB3_B2004a", "SB2_B2004a"),
}  # fmt: skip
# Positions along each sequence (0 = first template) that red and blue galaxies take, uniformly.
RED_RANGE: dict[str, tuple[float, float]] = {"cosmos": (0.0, 8.0), "cww": (0.0, 0.5)}  # ellipticals to Sa
BLUE_RANGE: dict[str, tuple[float, float]] = {
    "cosmos": (8.0, 30.0),
    "cww": (1.0, 5.0),
}  # Sa to SB11; Sbc to SB2
OPT_RANGE_NM = (400.0, 700.0)


@dataclass(frozen=True)
class TemplateSet:
    """One family's templates: `flux` (n_templates, n_rest) on `xpz.data.sed.rest_wavelengths()`,
    unit mean over 400-700 nm, in sequence order (`names`)."""

    names: tuple[str, ...]
    flux: np.ndarray

    def at(self, position: np.ndarray, cols: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """(n, k) SED values of galaxies at sequence `position` (n,), read at rest-grid columns
        `cols` (n, k) and `cols + 1` with weights 1 - `frac`, `frac` (n, 1) (the redshift shift)."""
        lo = np.clip(np.floor(position).astype(np.int64), 0, len(self.names) - 2)
        t = np.clip(position - lo, 0.0, 1.0)[:, None]
        out = np.zeros(cols.shape)
        for offset, weight in ((0, 1.0 - t), (1, t)):
            table = self.flux[lo + offset]  # (n, n_rest)
            pick = np.take_along_axis(table, cols, axis=1) * (1.0 - frac)
            pick += np.take_along_axis(table, cols + 1, axis=1) * frac
            out += weight * pick
        return out


def draw_positions(family: str, red: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(n,) positions along `family`'s sequence for galaxies of class `red` (n,) bool from uniform
    draws `u` (n,) in [0, 1)."""
    lo = np.where(red, RED_RANGE[family][0], BLUE_RANGE[family][0])
    hi = np.where(red, RED_RANGE[family][1], BLUE_RANGE[family][1])
    return lo + (hi - lo) * u


def read_sed(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength nm, f_lambda) of one RAIL/LePhare ``.sed`` file (two columns: Angstrom, f_lambda);
    rows with wavelength <= 0 dropped. Raises ValueError naming the file if it has no usable rows."""
    try:
        data = np.atleast_2d(np.loadtxt(path, usecols=(0, 1)))
    except ValueError as err:
        raise ValueError(f"{path}: not two numeric columns (Angstrom, f_lambda): {err}") from None
    ok = np.isfinite(data).all(axis=1) & (data[:, 0] > 0)
    if ok.sum() < 10:
        raise ValueError(f"{path}: fewer than 10 usable (wavelength, flux) rows")
    wave, flux = data[ok, 0] / 10.0, data[ok, 1]
    order = np.argsort(wave, kind="stable")
    return wave[order], np.clip(flux[order], 0.0, None)


def build_templates(sed_dir: Path) -> tuple[dict[str, TemplateSet], dict[str, str]]:
    """The two template sets from the RAIL SED folder `sed_dir`, resampled and normalised (module
    doc), and the sha256 of each source file. Raises FileNotFoundError naming a missing file."""
    from scipy.ndimage import gaussian_filter1d

    lam = rest_wavelengths()
    ln_grid = np.log(lam)
    step = float(np.median(np.diff(ln_grid)))
    opt = (lam > OPT_RANGE_NM[0]) & (lam < OPT_RANGE_NM[1])
    sets, digests = {}, {}
    for family, names in SEQUENCES.items():
        rows = []
        for name in names:
            path = Path(sed_dir) / f"{name}.sed"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (expected the RAIL SED folder, module doc)")
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            wave, flux = read_sed(path)
            # onto a fine uniform ln(lambda) grid, smoothed to one output step, then sampled
            fine = np.arange(ln_grid[0] - 4 * step, ln_grid[-1] + 4 * step, step / 8.0)
            f = np.interp(fine, np.log(wave), flux)
            f = gaussian_filter1d(f, sigma=8.0, mode="nearest")
            rows.append(np.interp(ln_grid, fine, f))
        flux = np.asarray(rows)
        flux /= flux[:, opt].mean(axis=1, keepdims=True)
        sets[family] = TemplateSet(names=names, flux=flux.astype(np.float32))
    return sets, digests


def save_templates(
    sets: dict[str, TemplateSet], digests: dict[str, str], path: Path = TEMPLATES_PATH
) -> Path:
    """Write the template sets and their provenance (source, sha256 per file) as compressed .npz."""
    arrays: dict[str, Any] = {f"{family}_flux": s.flux for family, s in sets.items()}
    arrays.update({f"{family}_names": np.asarray(s.names) for family, s in sets.items()})
    arrays["source"] = np.asarray(SOURCE)
    arrays["sha256"] = np.asarray([f"{k} {v}" for k, v in sorted(digests.items())])
    np.savez_compressed(path, **arrays)
    return path


@lru_cache(maxsize=2)
def load_templates(path: Path = TEMPLATES_PATH) -> dict[str, TemplateSet]:
    """The committed template sets by family ('cosmos', 'cww'). Raises ValueError if the file's grid
    is not the generator's rest-frame grid (rebuild it: module doc)."""
    with np.load(path) as f:
        sets = {
            family: TemplateSet(names=tuple(str(n) for n in f[f"{family}_names"]), flux=f[f"{family}_flux"])
            for family in SEQUENCES
        }
    n_rest = rest_wavelengths().size
    for family, s in sets.items():
        if s.flux.shape != (len(SEQUENCES[family]), n_rest):
            raise ValueError(f"{path}: {family} templates have shape {s.flux.shape}, the grid needs "
                             f"({len(SEQUENCES[family])}, {n_rest}); rebuild with python -m xpz.data.empirical")  # fmt: skip
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xpz.data.empirical",
        description="Rebuild the committed COSMOS and CWW template sets (src/xpz/data/empirical_templates.npz) "
        "from the SED folder of LSST DESC RAIL's pz-rail-base wheel.",
    )
    parser.add_argument("--sed-dir", type=Path, required=True,
                        help="folder holding the RAIL .sed files (rail/examples_data/estimation_data/data/SED)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=TEMPLATES_PATH, help="output .npz (default: the package's)"
    )
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        print(f"--out {args.out}: folder {args.out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        sets, digests = build_templates(args.sed_dir)
    except (OSError, ValueError) as err:
        print(f"python -m xpz.data.empirical: {err}", file=sys.stderr)
        return 2
    save_templates(sets, digests, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(s.names)} templates" for k, s in sets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
