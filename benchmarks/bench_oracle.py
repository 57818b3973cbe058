"""What the data permit: a Bayesian template fit that knows the generator's physics and noise.

The network is judged against targets (issue 18: MAE <= 0.015 on a galaxy physics it never saw);
this script measures what any estimator could reach on the same galaxies. It fits each galaxy's
186 fluxes, as the network reads them, with the full covariance of their noise
(`xpz.data.likelihood.likelihood_view`: on the 40 BP + 49 RP directions the sampling resolves; Gaia's
archive publishes such covariances per source) against a grid of an observed-template family's spectra
(`cww` or `cosmos`: a galaxy is a position along the family's template sequence, its dust an
E(B-V) and a law slope), with the generator's own priors: n(z) and the luminosity function given
the galaxy's G, the red fraction by absolute magnitude, the family's positions and dust amounts.
The amplitude is free (flat prior). The posterior median of z is the estimate, its central 68%
the interval (Benitez 2000 for the Bayesian template fit; Ilbert et al. 2006; Brammer et al. 2008).

Fitting a family with its own templates (`--fit` = the family) is the information limit's proxy:
the physics and the noise known, up to the grid's steps (so an upper bound on the Bayes-optimal
MAE). Fitting it with the other family's templates is template fitting on a physics it does not
know, as the network meets `cww`. `--model` adds the network's figures on the same galaxies.

    python benchmarks/bench_oracle.py --family cww --fit cww --fit cosmos --model models:/xpz-redshift@champion
    python benchmarks/bench_oracle.py --n 100 --dz 0.01      # a quick look (about a minute)

Work is set in galaxies and grid points, never in time: about 2 s per galaxy and 100 z-values for
`cww`, ~2.5x that with the `cosmos` grid, on the reference host.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cli import count, run_main  # noqa: E402

SEED = 2026  # bench_heldout's generator seed: the same galaxies as its table (the first --n of them)
EMPIRICAL = ("cww", "cosmos")
EBV_STEP = 0.02
EBV_MAX = 0.5
DELTA_GRID = (
    -0.6,
    -0.35,
    -0.1,
    0.15,
    0.4,
)  # modified-Calzetti slopes (the generator: N(-0.1, 0.25) in [-0.8, 0.4])
BUMP = 1.5  # the 2175 A bump's amplitude (the generator: U(0, 3)); at z <= 0.6 it lies blueward of BP


@dataclass(frozen=True)
class Grid:
    """A template family's model spectra (`likelihood_view` coordinates, r of them) on a grid of
    z-values `z` (Z,), for red and for blue galaxies: `models[c]` (Z, K_c, r), `log_weights[c]` (K_c,) their prior
    weights within the class (c = 0 red, 1 blue)."""

    family: str
    z: np.ndarray
    models: tuple[np.ndarray, np.ndarray]
    log_weights: tuple[np.ndarray, np.ndarray]


def _interval_weights(grid: np.ndarray, cdf, lo: float, hi: float) -> np.ndarray:
    """Prior mass of the cells around each grid value (edges halfway between), tails folded in."""
    edges = np.concatenate([[lo], 0.5 * (grid[1:] + grid[:-1]), [hi]])
    w = np.diff(cdf(edges))
    w[0] += cdf(lo)
    w[-1] += 1.0 - cdf(hi)
    return w / w.sum()


def build_grid(family: str, z_max: float, dz: float, pos_step: float) -> Grid:
    """The model spectra of `family`'s templates on z (steps of `dz` up to z_max), sequence
    positions (steps of `pos_step` within the red and the blue ranges), E(B-V) and dust-law slope."""
    from scipy import stats

    from xpz.data import empirical
    from xpz.data import synthetic as syn
    from xpz.data.likelihood import to_span
    from xpz.data.sed import LNL_STEP, attenuation_curve, instrument

    mod = instrument()
    to_data = to_span(mod.sed_to_flux)  # (n_obs, r): an SED's fluxes on the likelihood's coordinates
    templates = empirical.load_templates()[family]
    ebv = np.arange(0.0, EBV_MAX + 1e-9, EBV_STEP)
    delta = np.array(DELTA_GRID)
    w_delta = _interval_weights(
        delta, stats.norm(syn.DUST_DELTA_MEAN, syn.DUST_DELTA_SIGMA).cdf, *syn.DUST_DELTA_RANGE
    )
    classes = []
    for (lo, hi), mean in (
        (empirical.RED_RANGE[family], syn.EMPIRICAL_EBV_MEAN_RED),
        (empirical.BLUE_RANGE[family], syn.EMPIRICAL_EBV_MEAN_BLUE),
    ):
        pos = np.arange(lo, hi + 1e-9, pos_step)
        w_ebv = _interval_weights(ebv, stats.expon(scale=mean).cdf, 0.0, 0.8)
        logw = np.log(np.full(pos.size, 1.0 / pos.size))[:, None, None] + np.log(w_ebv)[None, :, None]
        classes.append((pos, (logw + np.log(w_delta)[None, None, :]).ravel()))
    zs = np.arange(dz / 2, z_max, dz)
    models = [np.empty((zs.size, lw.size, to_data.shape[1])) for _, lw in classes]
    for j, z in enumerate(zs):
        s = np.log1p(z) / LNL_STEP
        frac = np.ceil(s) - s
        idx = (mod.k0 - int(np.ceil(s))) + np.arange(mod.n_obs)
        lam = (1 - frac) * mod.lam_rest[idx] + frac * mod.lam_rest[idx + 1]
        k_cal = (1 - frac) * mod.calzetti[idx] + frac * mod.calzetti[idx + 1]
        att = np.exp(
            -0.4 * np.log(10.0) * ebv[:, None, None] * attenuation_curve(lam, k_cal, delta[:, None], BUMP)
        )
        for i, (pos, _) in enumerate(classes):
            cont = templates.at(pos, np.repeat(idx[None], pos.size, 0), np.full((pos.size, 1), frac))
            sed = (cont[:, None, None, :] * att[None]).reshape(-1, mod.n_obs)
            models[i][j] = sed @ to_data
    return Grid(family, zs, (models[0], models[1]), (classes[0][1], classes[1][1]))


def log_prior_z(grid: Grid, g: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(log p(z | G) (n, Z), P(red | z, G) (n, Z)): the generator's n(z) times its luminosity function
    at M = G - mu(z), renormalised over the magnitude window, and its red fraction at M."""
    from xpz.data import synthetic as syn
    from xpz.data.sed import instrument

    mod = instrument()
    dist, _ = syn._z_dist(cfg.z_max)
    mu = np.interp(grid.z, mod.dm_z, mod.dm)
    lf_pdf = np.gradient(mod.lf_cdf, mod.lf_grid)
    mag = g[:, None] - mu[None, :]
    window = np.interp(cfg.g_max - mu, mod.lf_grid, mod.lf_cdf) - np.interp(
        cfg.g_min - mu, mod.lf_grid, mod.lf_cdf
    )
    log_p = (
        np.log(dist.pdf(grid.z))[None] + np.log(np.interp(mag, mod.lf_grid, lf_pdf) + 1e-300) - np.log(window)
    )
    return log_p, syn.red_fraction(mag)


def template_fit(
    view: dict[str, np.ndarray], grid: Grid, cfg, template_error: float = 0.0, progress: bool = True
) -> pd.DataFrame:
    """Posterior median z and central 68% interval per galaxy of `view` (`likelihood_view`) under
    `grid`'s physics: chi^2 = (c - a m)^T C^-1 (c - a m) with C the galaxy's covariance, the
    amplitude a marginalised with a flat prior (a > 0), summed over the grid with its prior weights.
    `template_error` adds (template_error x flux)^2 to each pixel's variance, as template-fitting
    codes allow for templates that do not match (EAZY's template error function; Brammer et al. 2008)."""
    from scipy.special import logsumexp
    from tqdm.auto import tqdm

    from xpz.data.likelihood import flux_span
    from xpz.spectra import N_BP, N_FLUX

    n = len(view["z"])
    log_p, p_red = log_prior_z(grid, view["g"], cfg)
    like = np.empty((2, n, grid.z.size))
    flat = [m.reshape(-1, m.shape[-1]) for m in grid.models]  # (Z * K_c, r): one product per galaxy
    for i in tqdm(
        range(n), desc=f"template fit ({grid.family} physics)", unit=" galaxies", disable=not progress
    ):
        cov = view["covariance"][i]
        if template_error > 0:
            cov = cov.copy()
            r_bp = flux_span()[0].shape[1]
            for band, at, span in zip(
                (slice(0, N_BP), slice(N_BP, N_FLUX)),
                (slice(0, r_bp), slice(r_bp, None)),
                flux_span(),
                strict=True,
            ):
                cov[at, at] += span.T @ (((template_error * view["flux"][i, band]) ** 2)[:, None] * span)
        whiten = np.linalg.inv(np.linalg.cholesky(cov))
        data = whiten @ view["data"][i]
        chi0 = data @ data
        for c, (models, log_w) in enumerate(zip(flat, grid.log_weights, strict=True)):
            wm = models @ whiten.T
            b = wm @ data
            norm = np.einsum("kp,kp->k", wm, wm)
            with np.errstate(divide="ignore", invalid="ignore"):
                ll = -0.5 * (chi0 - b**2 / norm) - 0.5 * np.log(norm)
            ll = np.where((b > 0) & (norm > 0), ll, -np.inf).reshape(grid.z.size, -1)
            like[c, i] = logsumexp(ll + log_w[None], axis=1)
    post = log_p + np.logaddexp(np.log(p_red) + like[0], np.log1p(-p_red) + like[1])
    post = np.exp(post - post.max(axis=1, keepdims=True))
    cdf = np.cumsum(post, axis=1) / post.sum(axis=1, keepdims=True)
    half = 0.5 * (grid.z[1] - grid.z[0])
    at = lambda q: grid.z[np.argmax(cdf >= q, axis=1)]  # noqa: E731
    return pd.DataFrame(
        {
            "z": at(0.5),
            "z_lower": at(0.16) - half,
            "z_upper": at(0.84) + half,
            "ood_score": np.nan,
            "eligible": True,
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_oracle.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--family", choices=EMPIRICAL, default="cww", help="the galaxies (default: %(default)s)")
    ap.add_argument("--fit", choices=EMPIRICAL, action="append", default=None,
                    help="the physics the fit assumes; repeatable (default: the --family's own)")  # fmt: skip
    ap.add_argument("--n", type=count(20), default=1000, help="galaxies (default: %(default)s)")
    ap.add_argument("--dz", type=float, default=0.004, help="z step of the grid (default: %(default)s)")
    ap.add_argument("--pos-step", type=float, default=None,
                    help="template-sequence step (default: 0.1 for cww, 0.5 for cosmos)")  # fmt: skip
    ap.add_argument(
        "--model", default=None, help="also score this model (models:/..., runs:/..., a .keras file)"
    )
    ap.add_argument("--template-error", type=float, default=0.0,
                    help="fractional template error added in quadrature per pixel (default: %(default)s)")  # fmt: skip
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--doc", type=Path, default=None, help="write the table between its markers in this file")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if not 0 < args.dz <= 0.05 or (args.pos_step is not None and not 0 < args.pos_step <= 1):
        ap.error("--dz must be in (0, 0.05] and --pos-step in (0, 1]")
    if not 0 <= args.template_error <= 1:
        ap.error("--template-error must be in [0, 1]")

    from bench_families import score, score_cells
    from xpz.config import load_config
    from xpz.data.likelihood import likelihood_view
    from xpz.data.synthetic import generate
    from xpz.hostinfo import print_host

    cfg = load_config(args.params)
    predictor = None
    if args.model:
        from _registered_model import load_model

        _, _, predictor = load_model(args)
    host = print_host()  # CPU model, numpy sgemm GFLOP/s, reference network samples/s
    data_cfg = cfg.data.model_copy(
        update={"n_galaxies": args.n, "seed": SEED, "families": {args.family: 1.0}}
    )
    view = likelihood_view(data_cfg)
    truth = pd.DataFrame({"z": view["z"]})
    results: dict = {
        "family": args.family,
        "n": args.n,
        "seed": SEED,
        "dz": args.dz,
        "host": host,
        "scores": {},
    }
    rows = []
    for fit in args.fit or [args.family]:
        t0 = time.perf_counter()
        grid = build_grid(fit, data_cfg.z_max, args.dz, args.pos_step or (0.1 if fit == "cww" else 0.5))
        pred = template_fit(view, grid, data_cfg, args.template_error, progress=args.progress)
        label = f"template fit, {fit} physics" + (" (known)" if fit == args.family else " (unseen)")
        if args.template_error:
            label += f", template error {args.template_error:.0%}"
        sc = score(truth, pred, cfg.evaluate)
        results["scores"][label] = sc
        rows.append([label, *score_cells(sc)[:5], f"{sc['n']:,.0f}"])
        print(f"{label}: MAE {sc['mae']:.4f} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if predictor is not None:
        from xpz.spectra import flux_matrix

        frame = generate(data_cfg)
        assert np.array_equal(frame["z"].to_numpy(), view["z"])  # the same galaxies
        pred = predictor.predict(flux_matrix(frame))
        label = f"network {predictor.name} v{predictor.version}"
        sc = score(truth, pred, cfg.evaluate)
        results["scores"][label] = sc
        rows.append([label, *score_cells(sc)[:5], f"{sc['n']:,.0f}"])
    from _report import render, save

    out = {"name": f"oracle_{args.family}", "columns": ["estimator", "MAE", "sigma_NMAD", "coverage 68",
           "worst bin coverage (z < 0.45)", "mean error z < 0.10", "galaxies"], "rows": rows, "run": results}  # fmt: skip
    print(render(out))
    save(out, args.json, args.doc)
    return 0


if __name__ == "__main__":
    run_main(main)
