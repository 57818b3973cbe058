"""The README's headline table, from a finished `make run` (`reports/metrics.json`).

Writes the results JSON (`--json`, committed: benchmarks/results/headline.json) and the table between `<!-- bench:headline -->` markers of
README.md, stamped with the commit and the host (`benchmarks/_report.py`).

    python benchmarks/headline.py --metrics reports/metrics.json --wall-seconds 476
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import REPO, save  # noqa: E402

FAMILIES = ("kcorrect", "bagpipes", "cosmos")  # the default dataset's (params.yaml data.families)
ROWS = (
    ("test MAE", "test_mae", "{:.4f}"),
    ("sigma_NMAD", "test_sigma_nmad", "{:.4f}"),
    ("outlier fraction (|dz|/(1+z) > 0.15)", "test_outlier_fraction", "{:.4f}"),
    ("worst per-bin mean error (z <= 0.5)", "test_worst_bin_bias", "{:+.3f}"),
    ("68% interval coverage", "test_coverage_68", "{:.3f}"),
    *(
        (f"{label}, kcorrect / bagpipes / cosmos", tuple(f"{key}_{f}" for f in FAMILIES), fmt)
        for label, key, fmt in (
            ("test MAE", "test_mae", "{:.4f}"),
            ("68% coverage", "test_coverage_68", "{:.3f}"),
            ("mean error at z < 0.10", "test_low_z_bias", "{:+.4f}"),
            ("flagged ineligible", "test_flagged", "{:.3f}"),
        )
    ),
    (
        "baselines: training mean / kNN (k = 10) MAE",
        ("baseline_mean/test_mae", "baseline_knn/test_mae"),
        "{:.4f}",
    ),
)


def results(metrics: dict[str, float], wall_seconds: float | None = None) -> dict:
    """The headline results (name "headline") from a run's flat metrics."""
    rows = []
    for label, keys, fmt in ROWS:
        keys = (keys,) if isinstance(keys, str) else keys
        if all(k in metrics for k in keys):
            rows.append([label, " / ".join(fmt.format(metrics[k]) for k in keys)])
    if wall_seconds:
        rows.append(["`make run` wall time, install included", f"{wall_seconds:.0f} s"])
    return {"name": "headline", "columns": ["measure", "value"], "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics", default="reports/metrics.json", help="a run's metrics (make run writes it)")
    ap.add_argument("--wall-seconds", type=float, default=None, help="the measured make run time")
    ap.add_argument(
        "--json",
        default=str(REPO / "benchmarks" / "results" / "headline.json"),
        help="where to write the results JSON",
    )
    ap.add_argument("--doc", default=str(REPO / "README.md"), help="the markdown file with the markers")
    args = ap.parse_args(argv)
    try:
        metrics = json.loads(Path(args.metrics).read_text())
    except (OSError, ValueError) as err:
        print(f"error: {args.metrics}: {err} (run `make run` first)", file=sys.stderr)
        return 2
    save(results(metrics.get("metrics", metrics), args.wall_seconds), args.json, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
