"""Coverage report (issue 12, item 4): does the 68% interval cover 68% in every bin of true z and
every S/N quartile, and how large is the mean error per bin?

For a registered model or a .keras file, on (1) the test split of the project's dataset and (2) a
freshly generated set (`xpz.data.synthetic.generate`, a seed other than the training data's), it
prints per bin of true z (`evaluate.bin_width`, `xpz.model.evaluate.bin_table`) and per quartile of
log total flux (S/N, `xpz.model.coverage_report.snr_table`): count, mean error (z_pred - z_true),
MAE and 68% coverage; then MAE, overall coverage, the worst per-bin mean error (bins up to
`evaluate.bias_z_max` with >= `evaluate.min_bin_count` objects) and the coverage spread over bins
up to z = 0.45 with >= 50 objects and over the quartiles (`coverage_spread`). Figures do not depend
on the host; the host line is printed as by every benchmark.

    python benchmarks/bench_coverage.py                                  # models:/xpz-redshift@champion
    python benchmarks/bench_coverage.py --model model.keras --n 200000 --seed 2026
    python benchmarks/bench_coverage.py --json coverage.json --doc docs/benchmarks.md   # the table there
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _cli import count, run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _registered_model import add_model_arguments, load_model  # noqa: E402

SEED = 2026  # not the training seed (params data.seed)


def report(label: str, z_true: np.ndarray, fluxes: np.ndarray, pred: pd.DataFrame, cfg) -> dict[str, float]:
    """Print the per-bin and per-S/N tables of one set and return its summary figures."""
    from xpz.model.coverage_report import coverage_spread, snr_table
    from xpz.model.evaluate import summary_metrics

    m, table = summary_metrics("", z_true, pred["z"], pred["z_lower"], pred["z_upper"], cfg.evaluate)
    snr = snr_table(z_true, pred["z"], pred["z_lower"], pred["z_upper"], fluxes)
    m.update(coverage_spread(table, snr, cfg.coverage.z_max, cfg.coverage.min_count))
    print(f"\n### {label}: {len(z_true):,} galaxies\n")
    print("| true z | count | mean error | MAE | coverage 68 |\n|---|---|---|---|---|")
    for _, r in table[table["count"] > 0].iterrows():
        print(
            f"| {r['bin']} | {int(r['count'])} | {r['mean_error']:+.4f} | {r['mae']:.4f} | {r['coverage_68']:.3f} |"
        )
    print(
        "\n| S/N quartile (log10 total flux) | count | mean error | MAE | coverage 68 |\n|---|---|---|---|---|"
    )
    for _, r in snr.iterrows():
        span = f"{r['group']} ({r['log_flux_lo']:.2f}-{r['log_flux_hi']:.2f})"
        print(
            f"| {span} | {int(r['count'])} | {r['mean_error']:+.4f} | {r['mae']:.4f} | {r['coverage_68']:.3f} |"
        )
    print(f"\nMAE {m['mae']:.5f}, coverage {m['coverage_68']:.3f}, worst per-bin mean error "
          f"{m['worst_bin_bias']:+.4f} (bin from {m['worst_bin_bias_z']:.2f}), coverage per bin (z <= 0.45, "
          f">= 50) {m['coverage_68_bin_min']:.3f}-{m['coverage_68_bin_max']:.3f}, per S/N quartile "
          f"{m['coverage_68_snr_min']:.3f}-{m['coverage_68_snr_max']:.3f}", flush=True)  # fmt: skip
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--data", default=None, help="dataset (default: params data.path)")
    ap.add_argument("--split", default=None, help="split assignment (default: params split.path)")
    ap.add_argument("--n", type=count(0), default=200_000, help="galaxies in the fresh set (0: none)")
    ap.add_argument("--seed", type=int, default=SEED, help="generator seed of the fresh set")
    ap.add_argument("--chunk-size", type=count(1), default=20_000)
    ap.add_argument("--json", default=None, help="write the summary rows to this results JSON")
    ap.add_argument("--doc", default=None, help="render them into this markdown file (docs/benchmarks.md)")
    args = ap.parse_args(argv)
    from xpz.hostinfo import print_host

    print_host()  # CPU model, numpy sgemm GFLOP/s, reference network samples/s
    quiet_telemetry()

    from xpz.data.split import load_splits
    from xpz.data.synthetic import generate
    from xpz.spectra import TARGET_COLUMN, flux_matrix

    cfg, model, predictor = load_model(args)
    print(f"model {model} ({predictor.uri})")
    sets = []
    test = load_splits(args.data or cfg.data.path, args.split or cfg.split.path).test
    sets.append(("test split", test))
    if args.n > 0:
        t0 = time.perf_counter()
        fresh = generate(cfg.data.model_copy(update={"n_galaxies": args.n, "seed": args.seed,
                                                     "chunk_size": args.chunk_size}))  # fmt: skip
        print(f"generated {len(fresh):,} galaxies (seed {args.seed}) in {time.perf_counter() - t0:.0f} s")
        sets.append((f"fresh set (seed {args.seed})", fresh))
    rows = []
    for label, data in sets:
        x = flux_matrix(data)
        m = report(label, data[TARGET_COLUMN].to_numpy(float), x, predictor.predict(x), cfg)
        rows.append([label, f"{len(data):,}", f"{m['mae']:.4f}", f"{m['coverage_68']:.3f}",
                     f"{m['worst_bin_bias']:+.4f}", f"{m['coverage_68_bin_min']:.3f}-{m['coverage_68_bin_max']:.3f}",
                     f"{m['coverage_68_snr_min']:.3f}-{m['coverage_68_snr_max']:.3f}"])  # fmt: skip
    if args.json or args.doc:
        from _report import save

        columns = ["set", "galaxies", "MAE", "68% coverage", "worst per-bin mean error",
                   "coverage per bin (z <= 0.45)", "coverage per S/N quartile"]  # fmt: skip
        save({"name": "coverage", "columns": columns, "rows": rows}, args.json, args.doc)
    return 0


if __name__ == "__main__":
    run_main(main)
