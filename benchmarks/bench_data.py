"""Time and peak memory of the data stages (generate -> validate -> split) at a given size.

Each stage runs as its own `xpz` process in a scratch folder, so its wall time and peak resident
memory (ru_maxrss of the child) are measured separately, as a user would meet them.

    python benchmarks/bench_data.py                 # the seed's size: 520,393 galaxies (profile full)
    python benchmarks/bench_data.py --n 200000      # what `make run` generates (params.yaml data.n_galaxies)

Both generate in chunks of 20,000 rows (profile full's data.chunk_size). `make run` generates with
params.yaml's default profile, in chunks of 5,000: the same bytes (they do not depend on the chunk
size, xpz.data.synthetic), with the memory a smaller chunk needs.

Targets (issue: foundation): generate < 10 min, validate < 3 min, peak memory < 6 GiB, on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cli import count, run_main

REPO = Path(__file__).resolve().parents[1]


def run_stage(args: list[str], cwd: Path) -> tuple[float, float]:
    """Run one command; return (wall seconds, peak RSS in GiB of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=count(1000), default=520_393, help="galaxies to generate (default: %(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    from xpz.hostinfo import print_host

    print_host()  # CPU model, numpy sgemm GFLOP/s, reference network samples/s: compare hosts as ratios

    xpz = str(Path(sys.executable).parent / "xpz")
    work = Path(tempfile.mkdtemp(prefix="xpz-bench-data-"))
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    common = ["-S", f"data.n_galaxies={args.n}", "-S", "data.chunk_size=20000"]
    stages = {
        "generate": [xpz, "data", "generate", *common],
        "validate": [xpz, "data", "validate"],
        "split": [xpz, "data", "split"],
    }
    print(f"data stages on {args.n:,} galaxies, {os.cpu_count()} cores, scratch {work}")
    total = 0.0
    for name, cmd in stages.items():
        wall, peak = run_stage(cmd, work)
        total += wall
        rate = f"  ({args.n / wall:,.0f} galaxies/s)" if name == "generate" else ""
        print(f"  {name:<9} {wall:8.1f} s   peak RSS {peak:5.2f} GiB{rate}")
    size = (work / "data" / "galaxies.parquet").stat().st_size / 2**20
    print(f"  total     {total:8.1f} s   dataset {size:,.0f} MiB on disk")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    run_main(main)
