"""Benchmark of reading Gaia XP files: a gzipped bulk-layout ECSV against the same spectra as Parquet.

Builds N sources (default 100,000): generated galaxy spectra (tiled from a few thousand) fitted with
the DR3 XP basis functions to 55 + 55 coefficients, then written
1. as the bulk download's `XpContinuousMeanSpectrum_*.csv.gz`: ECSV with the archive's 26 columns
   (header taken from the real DR3 fixture; coefficient errors and the 1,485-value correlation
   arrays at their real length), gzip-compressed;
2. as our Parquet (source_id + the 186 fluxes those coefficients give).
Each goes through `xpz predict` in a subprocess (the default model: an untrained ensemble registered
in a temporary MLflow store); printed: spectra/s (reading + conversion + model + writing, model load
excluded), peak RSS (wait4; target < 2 GiB) and the host: CPU model, numpy sgemm GFLOP/s and the
model's own rate on fluxes in memory (the reference network).

    python benchmarks/bench_formats.py --n 20000
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from _cli import count, run_main  # noqa: E402
from bench_predict import base_spectra, build, register, write_tiled  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

quiet_telemetry()
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gaia_xp" / "XP_CONTINUOUS_RAW.ecsv"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def fit_coefficients(fluxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from xpz.data.xp import design_matrix
    from xpz.spectra import N_BP

    out = []
    for band, cols in (("bp", slice(0, N_BP)), ("rp", slice(N_BP, None))):
        sol, *_ = np.linalg.lstsq(design_matrix(band).T, fluxes[:, cols].T.astype(np.float64), rcond=None)
        out.append(sol.T)
    return out[0], out[1]


def _cell(values: np.ndarray) -> str:
    return '"[' + ",".join(repr(float(v)) for v in values) + ']"'


def write_bulk_ecsv(path: Path, bp: np.ndarray, rp: np.ndarray, n: int) -> None:
    """The bulk layout: the fixture's ECSV header (26 columns) and one row per source, gzipped."""
    lines = FIXTURE.read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    names = next(ln for ln in lines if not ln.startswith("#")).split(",")
    rng = np.random.default_rng(1)
    errors = _cell(rng.uniform(0.5, 5.0, 55))
    corr = _cell(rng.uniform(-0.5, 0.5, 55 * 54 // 2))
    base_cells = [(_cell(b), _cell(r)) for b, r in zip(bp, rp)]
    scalars = {"solution_id": "4545469030156206080", "basis_function_id": "56", "degrees_of_freedom": "4646",
               "n_parameters": "55", "n_measurements": "4701", "n_rejected_measurements": "19",
               "standard_deviation": "1.1224667", "chi_squared": "5853.6416", "n_relevant_bases": "53",
               "relative_shrinking": "0.0011"}  # fmt: skip
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write("\n".join(header) + "\n" + ",".join(names) + "\n")
        for i in range(n):
            bcell, rcell = base_cells[i % len(base_cells)]
            row = []
            for name in names:
                key = name.split("_", 1)[1] if name[:3] in ("bp_", "rp_") else name
                if name == "source_id":
                    row.append(str(i))
                elif key == "coefficients":
                    row.append(bcell if name.startswith("bp") else rcell)
                elif key == "coefficient_errors":
                    row.append(errors)
                elif key == "coefficient_correlations":
                    row.append(corr)
                else:
                    row.append(scalars.get(key, scalars.get(name, "0")))
            fh.write(",".join(row) + "\n")


def run_predict(source: Path, out: Path, model: str, uri: str, chunk_size: int) -> tuple[float, float, str]:
    cmd = [str(Path(sys.executable).parent / "xpz"), "predict", str(source), "--model", model, "--out", str(out),
           "--no-progress", "--chunk-size", str(chunk_size)]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, cwd=out.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        fo.seek(0)
        fe.seek(0)
        stdout, stderr = fo.read(), fe.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"xpz predict {source.name} failed:\n{stderr[-3000:]}")
    line = stdout.strip().splitlines()[0]
    rate = float(line.split(" spectra/s")[0].rsplit("(", 1)[1].replace(",", ""))
    return rate, usage.ru_maxrss / 2**20, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=count(1), default=100_000, help="sources in the bulk file")
    parser.add_argument("--base", type=count(1), default=2000, help="generated spectra that are tiled")
    parser.add_argument("--chunk-size", type=count(1), default=16384)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()

    import tensorflow as tf

    print(f"[env] {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"numpy sgemm {sgemm_gflops():.0f} GFLOP/s, TF {tf.__version__}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="xpz-bench-formats-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        from xpz.data.xp import coefficients_to_fluxes

        bp, rp = fit_coefficients(base_spectra(args.base))
        fluxes = coefficients_to_fluxes(bp, rp)  # what the reader computes from the coefficients
        t = time.perf_counter()
        bulk = work / "XpContinuousMeanSpectrum_000000-003111.csv.gz"
        write_bulk_ecsv(bulk, bp, rp, args.n)
        parquet = write_tiled(work / "spectra.parquet", fluxes, args.n)
        print(f"[input] {args.n:,} sources: bulk ECSV {bulk.stat().st_size / 2**20:,.0f} MiB gzipped, "
              f"Parquet {parquet.stat().st_size / 2**20:,.0f} MiB (written in {time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
        model, n_params = build("default", fluxes)
        x = np.ascontiguousarray(fluxes[np.arange(min(args.n, 20000)) % len(fluxes)])
        model.predict(x[:2048], batch_size=1024, verbose=0)
        t = time.perf_counter()
        model.predict(x, batch_size=1024, verbose=0)
        print(f"[reference] default network ({n_params:,} params) model.predict on fluxes in memory: "
              f"{len(x) / (time.perf_counter() - t):,.0f} spectra/s", flush=True)  # fmt: skip
        uri = register(work, "xpz-bench-default", model, fluxes)
        results = {}
        for name, source in (("bulk ECSV .csv.gz", bulk), ("our Parquet", parquet)):
            rate, peak, line = run_predict(source, work / f"{source.stem}.pred.parquet", "models:/xpz-bench-default@champion",
                                           uri, args.chunk_size)  # fmt: skip
            results[name] = work / f"{source.stem}.pred.parquet"
            verdict = "OK" if peak < 2 else "OVER"
            print(f"[predict] {name:<18} {rate:>8,.0f} spectra/s, peak RSS {peak:.2f} GiB [{verdict}: target < 2 GiB] | {line}",
                  flush=True)  # fmt: skip
        import pandas as pd

        a, b = (pd.read_parquet(p) for p in results.values())
        print(
            f"[check] same z from both inputs: max |dz| = {np.abs(a['z'] - b['z']).max():.2e} over {len(a):,} sources",
            flush=True,
        )
    print(f"[env] load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    run_main(main)
