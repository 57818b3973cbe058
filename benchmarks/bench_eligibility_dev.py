"""The eligibility flag's dev protocol: how many galaxies of a family left out are flagged, and how many stars.

Issue 18 asks for <= 2% of unseen-physics galaxies flagged and >= 98% of real Gaia archive stars. The
eligibility layer (`xpz.model.ood`) does not read the CNN, so its settings can be chosen without
training one: this benchmark fits only the layer (params.yaml's `eligibility` section, changed with
`--set`), once per regime of `bench_families.py` (every family but one, and all), on the same numbers
of training and validation galaxies, and reports

- the share of each family's test galaxies flagged (a family left out is "unseen", and scored on every
  galaxy generated of it, as in bench_families.py: the regime fits on none of them), and why: by the
  star term alone or by a galaxy term (`OodDensity.over_cuts`), and among the galaxies brighter and
  fainter than the star term's bright line (`eligibility.star_bright_g`, G 17.8),
- the share of *dev* library stars flagged at archive magnitudes (G 15-17.65, uniform and weighted as
  Gaia's star counts), at the galaxies' magnitudes, and of the real Gaia DR3 stars in tests/fixtures;
- the share of fresh impostors flagged (`xpz.data.impostors`, `--impostors` of each kind, a seed the
  layer's own impostors never use), by kind: what the three galaxy terms guard against (noise,
  damaged bands), which a looser `eligibility.keep` gives up.

Nothing here touches what the reported figures are judged on: the galaxies are generator seed 11 (not
bench_families' table seed 7), no cww galaxy is generated, and the layer is fitted with
`star_held_out` raised to 0.36 so that the stars with 0.2 <= hash < 0.36 (a fifth of the fit part,
split by star as `xpz.data.stars.held_out_mask` splits) are scored instead of the held-out fifth
(hash < 0.2) that bench_stars.py and the docs report.

    python benchmarks/bench_eligibility_dev.py                                 # params.yaml as it is
    python benchmarks/bench_eligibility_dev.py --set eligibility.star_alpha=0.001 --json /tmp/a.json

Each regime takes ~40 s on a 2-core host at the default 90,000 galaxies (no TensorFlow training;
the star term is scikit-learn). Figures depend on the data and the parameters only; the host line is
printed as by every benchmark.
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

from _cli import run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_families import (  # noqa: E402
    _subset,
    family_galaxies,
    load_params,
    regime_sizes,
    regimes,
    scored_on,
    split_families,
)
from bench_stars import ARCHIVE_G_MAX, ARCHIVE_G_MIN, archive_count_weights, fixture_stars  # noqa: E402

DEV_SEED = 11  # the dev protocol's generator seed (docs/families.md)
DEV_STARS = (0.2, 0.36)  # hash range of the dev stars: above the held-out fifth, below the layer's fit part
STAR_SEED = 2030  # magnitudes and noise of the dev stars (not bench_stars' 2029 / 2030 on held-out stars)
IMPOSTOR_SEED = 2029  # the layer fits impostors of seed eligibility.seed + 13 (xpz.model.star_term)


def dev_stars(library, low: float = DEV_STARS[0], high: float = DEV_STARS[1]):
    """The library stars with `low` <= hash(source_id) < `high`: fitted on by no dev layer (their
    `star_held_out` is `high`) and outside the held-out part (hash < `low`) that reports use."""
    from xpz.data.stars import held_out_mask

    return library.subset(held_out_mask(library.source_id, high) & ~held_out_mask(library.source_id, low))


def flag_breakdown(layer, x: np.ndarray, line: float | None) -> dict[str, float]:
    """Why (n, 186) fluxes `x` are flagged by the eligibility `layer` (an `xpz.model.ood.OodDensity`
    with the star term): `flagged` (share of all), `star_only` (flagged by the star term and no galaxy
    term), `galaxy_terms` (by the residual, density or template term, the star term or not), and,
    with `line` (log10 total flux of the bright line, `bright_log_s`), `bright` (share of the sources at or
    above it), `flagged_bright` and `flagged_faint` (share flagged on either side; NaN when a side is
    empty). Unusable spectra count as flagged by no term."""
    from xpz.model.ood_terms import flux_features

    terms, valid = layer.terms(x)
    over = layer.over_cuts(terms, valid)
    flagged = ~layer.eligible(layer.combine(terms, valid))
    out = {
        "flagged": float(flagged.mean()),
        "star_only": float((over[:, 3] & ~over[:, :3].any(axis=1)).mean()),
        "galaxy_terms": float(over[:, :3].any(axis=1).mean()),
    }
    if line is not None:
        bright = valid & (np.log10(flux_features(x)[2]) >= line)  # total flux, 1 where unusable
        out["bright"] = float(bright.mean())
        out["flagged_bright"] = float(flagged[bright].mean()) if bright.any() else float("nan")
        out["flagged_faint"] = float(flagged[~bright].mean()) if (~bright).any() else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_eligibility_dev.py",
        description="Eligibility dev protocol: fit only the eligibility layer on every galaxy family but one "
        "(and on all), report the share of each family's test galaxies flagged and of dev library stars "
        "(never the held-out stars or the held-out cww family).",
    )
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--profile", default=None, help="params profile (default: the file's)")
    ap.add_argument("--n", type=int, default=90_000, help="galaxies generated (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=DEV_SEED, help="generator seed (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, e.g. --set eligibility.star_alpha=0.001 (repeatable)")  # fmt: skip
    ap.add_argument("--impostors", type=int, default=300,
                    help="fresh impostors of each kind scored (default: %(default)s; 0: none)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.n < 3000 or args.impostors < 0:
        print("--n must be at least 3000 and --impostors at least 0", file=sys.stderr)
        return 2

    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"--json {args.json}: cannot create its folder ({err.strerror})", file=sys.stderr)
            return 2

    from xpz.hostinfo import print_host

    cfg = load_params(args.params, args.profile, args.overrides)
    if cfg is None:
        return 2
    if not (cfg.eligibility.enabled and cfg.eligibility.stars):
        print("eligibility.enabled and eligibility.stars must be true: the protocol scores the star term",
              file=sys.stderr)  # fmt: skip
        return 2
    host = print_host()
    quiet_telemetry()
    import keras  # noqa: F401  (before xpz.model.ood, as bench_stars.py imports it)

    from xpz.data.impostors import generate_impostors
    from xpz.data.split import split_dataset
    from xpz.data.stars import read_library, star_fluxes
    from xpz.data.synthetic import generate
    from xpz.model.ood import fit_ood_layer
    from xpz.model.star_term import bright_log_s
    from xpz.spectra import flux_matrix

    ecfg = cfg.eligibility.model_copy(update={"star_held_out": DEV_STARS[1]})
    t0 = time.perf_counter()
    splits = split_dataset(
        generate(cfg.data.model_copy(update={"n_galaxies": args.n, "seed": args.seed})), cfg.split
    )
    families = split_families(splits)
    if families is None:
        return 2
    stars = dev_stars(read_library())
    archive, g_archive = star_fluxes(
        stars, cfg.data.model_copy(update={"g_min": ARCHIVE_G_MIN, "g_max": ARCHIVE_G_MAX}), seed=STAR_SEED,
        return_g=True,
    )  # fmt: skip
    counts = archive_count_weights(g_archive)
    faint = star_fluxes(stars, cfg.data, seed=STAR_SEED + 1)
    _, real = fixture_stars()
    impostors = generate_impostors(args.impostors, cfg.data, seed=IMPOSTOR_SEED) if args.impostors else None
    line = None if ecfg.star_bright_g is None else bright_log_s(ecfg.star_bright_g, ecfg, cfg.data)
    test_frames, whole_frames = family_galaxies(splits, families)
    tests = {f: flux_matrix(frame) for f, frame in test_frames.items()}
    whole = {f: flux_matrix(frame) for f, frame in whole_frames.items()}
    print(f"generated and split {args.n:,} galaxies (seed {args.seed}); {len(stars.teff):,} dev stars "
          f"(hash {DEV_STARS[0]}-{DEV_STARS[1]}); {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    plans = regimes(families)
    n_train, n_val = regime_sizes(splits, plans)
    results: dict = {"n": args.n, "seed": args.seed, "overrides": args.overrides, "host": host,
                     "n_train_per_regime": n_train, "n_val_per_regime": n_val, "n_dev_stars": len(stars.teff),
                     "n_real_stars": len(real), "regimes": {}}  # fmt: skip
    for regime, trained_on in plans.items():
        t0 = time.perf_counter()
        layer, _ = fit_ood_layer(
            flux_matrix(_subset(splits.train, trained_on, n_train, 1)),
            flux_matrix(_subset(splits.val, trained_on, n_val, 2)), ecfg, cfg.data,
        )  # fmt: skip

        def flagged(x: np.ndarray, layer=layer) -> np.ndarray:
            return ~layer.eligible(layer.score(x))

        on_archive = flagged(archive)
        row = {
            "galaxies": {
                f: {**flag_breakdown(layer, x, line), "seen": f in trained_on, "n": len(x)}
                for f, x in scored_on(trained_on, tests, whole).items()
            },
            "stars_archive_g": float(on_archive.mean()),
            "stars_archive_counts": float(np.average(on_archive, weights=counts)),
            "stars_galaxy_g": float(flagged(faint).mean()),
            "real_stars_flagged": int(flagged(real).sum()),
        }
        if impostors is not None:
            kinds, on_impostors = impostors["kind"].to_numpy(), flagged(flux_matrix(impostors))
            row["impostors"] = {k: float(on_impostors[kinds == k].mean()) for k in dict.fromkeys(kinds)}
            row["impostors_all"] = float(on_impostors.mean())
        results["regimes"][regime] = row
        gal = ", ".join(f"{f} {100 * v['flagged']:.2f}%{'' if v['seen'] else ' (unseen)'}"
                        for f, v in row["galaxies"].items())  # fmt: skip
        print(f"{regime} ({time.perf_counter() - t0:.0f} s): galaxies flagged {gal}; stars at G "
              f"{ARCHIVE_G_MIN}-{ARCHIVE_G_MAX} {100 * row['stars_archive_g']:.1f}% (weighted as star counts "
              f"{100 * row['stars_archive_counts']:.1f}%), at G {cfg.data.g_min}-{cfg.data.g_max} "
              f"{100 * row['stars_galaxy_g']:.1f}%; real stars {row['real_stars_flagged']} of {len(real)}", flush=True)  # fmt: skip
        for f, v in row["galaxies"].items():
            if not v["seen"] or regime == "all":
                bright = "" if line is None else (f"; {100 * v['flagged_bright']:.1f}% of the {100 * v['bright']:.0f}% "
                                                  f"brighter than G {ecfg.star_bright_g}, "
                                                  f"{100 * v['flagged_faint']:.2f}% of the fainter")  # fmt: skip
                print(f"  {f}: flagged {100 * v['flagged']:.2f}% = star term alone {100 * v['star_only']:.2f}% "
                      f"+ galaxy terms {100 * v['galaxy_terms']:.2f}%{bright}", flush=True)  # fmt: skip
        if impostors is not None:
            print("  impostors flagged: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in row["impostors"].items())
                  + f"; all {100 * row['impostors_all']:.1f}%", flush=True)  # fmt: skip
    regs = results["regimes"]
    unseen = [regs["all but " + f]["galaxies"][f]["flagged"] for f in families]
    seen = [v["flagged"] for r in regs.values() for v in r["galaxies"].values() if v["seen"]]
    results["summary"] = {
        "unseen_flagged": dict(zip(families, unseen, strict=True)),
        "seen_flagged_max": max(seen),
        "stars_archive_counts_min": min(r["stars_archive_counts"] for r in regs.values()),
    }
    if impostors is not None:
        results["summary"]["impostors_min"] = min(r["impostors_all"] for r in regs.values())
    print("\nunseen flagged " + " / ".join(f"{f} {100 * u:.2f}%" for f, u in zip(families, unseen, strict=True))
          + f" | seen at most {100 * max(seen):.2f}% | dev stars at archive G, weighted as star counts, "
          f"at least {100 * results['summary']['stars_archive_counts_min']:.1f}%"
          + (f" | impostors at least {100 * results['summary']['impostors_min']:.1f}%" if impostors is not None else ""))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
