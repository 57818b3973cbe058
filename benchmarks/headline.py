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

ROWS = (
    ("test MAE", "test_mae", "{:.4f}"),
    ("sigma_NMAD", "test_sigma_nmad", "{:.4f}"),
    ("outlier fraction (|dz|/(1+z) > 0.15)", "test_outlier_fraction", "{:.4f}"),
    ("worst per-bin mean error (z <= 0.5)", "test_worst_bin_bias", "{:+.3f}"),
    ("68% interval coverage", "test_coverage_68", "{:.3f}"),
)


def results(metrics: dict[str, float], wall_seconds: float | None = None) -> dict:
    """The headline results (name "headline") from a run's flat metrics."""
    rows = [[label, fmt.format(metrics[key])] for label, key, fmt in ROWS if key in metrics]
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
