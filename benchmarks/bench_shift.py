"""Robustness benchmark: a trained model on synthetic sets it never saw, some with shifted settings.

The model is judged on spectra from outside its training distribution (real Gaia data, or another
implementation of the same physics). This script measures how far the figures move when the data
do: it generates test sets with the embedded generator (`xpz.data.synthetic`) and prints, for each, MAE,
sigma_NMAD, outlier fraction, worst per-bin mean error (bins up to z = 0.5 with >= 20 objects) and
68%-interval coverage:

  - another seed (the same settings as training: the in-distribution reference);
  - noise x0.8 and x1.25 (spectra cleaner / noisier than in training);
  - a fainter limit G < 20.25 and a brighter sample G < 19.25;
  - all fluxes x1.2 (a calibration zero-point off by -0.2 mag; shapes unchanged).

    python benchmarks/bench_shift.py                                   # models:/xpz-redshift@champion
    python benchmarks/bench_shift.py --model runs:/<run_id>/model --n 50000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from _cli import count, run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _registered_model import add_model_arguments, load_model  # noqa: E402

SEED = 2026  # not the training seed (params data.seed)


def shifted_sets(data_cfg, n: int) -> list[tuple[str, dict, float]]:
    """(label, DataConfig update, flux factor) for each test set."""
    return [
        ("same settings, new seed", {}, 1.0),
        ("noise x0.8", {"noise": data_cfg.noise * 0.8}, 1.0),
        ("noise x1.25", {"noise": data_cfg.noise * 1.25}, 1.0),
        ("fainter: G < 20.25", {"g_max": 20.25}, 1.0),
        ("brighter: G < 19.25", {"g_max": 19.25}, 1.0),
        ("fluxes x1.2 (zero point -0.2 mag)", {}, 1.2),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--n", type=count(1000), default=50_000, help="galaxies per test set")
    args = ap.parse_args(argv)
    from xpz.hostinfo import print_host

    print_host()  # CPU model, numpy sgemm GFLOP/s, reference network samples/s: compare hosts as ratios
    quiet_telemetry()

    from xpz.data.synthetic import generate
    from xpz.model.evaluate import summary_metrics
    from xpz.spectra import TARGET_COLUMN, flux_matrix

    cfg, model, predictor = load_model(args)
    print(f"model {model} ({predictor.uri}); {args.n:,} galaxies per set, generator seed {SEED}\n")
    print("| test set | MAE | sigma_NMAD | outliers | worst bias z<=0.5 | coverage 68 | spectra/s |")
    print("|---|---|---|---|---|---|---|")
    for label, update, factor in shifted_sets(cfg.data, args.n):
        data = generate(cfg.data.model_copy(update={"n_galaxies": args.n, "seed": SEED, **update}))
        t0 = time.perf_counter()
        pred = predictor.predict(flux_matrix(data) * np.float32(factor))
        rate = len(data) / (time.perf_counter() - t0)
        m, _ = summary_metrics("", data[TARGET_COLUMN].to_numpy(), pred["z"], pred["z_lower"], pred["z_upper"],
                               cfg.evaluate)  # fmt: skip
        bias = f"{m['worst_bin_bias']:+.4f} ({m['worst_bin_bias_z']:.2f})"
        print(f"| {label} | {m['mae']:.4f} | {m['sigma_nmad']:.4f} | {m['outlier_fraction']:.4f} | {bias} | "
              f"{m['coverage_68']:.3f} | {rate:,.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)
