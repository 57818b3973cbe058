"""Benchmark of batch prediction: speed, peak memory, Dask speed-up. Prints figures.

1. Throughput on N spectra (default 200,000) for the seed architecture (Table 2) and the CPU default
   model (an ensemble of `train.members` networks), each carrying the fitted coverage recalibration
   and eligibility layers as a trained model does: `xpz predict` (Parquet in -> Parquet out, via
   the registered pyfunc, model loading excluded; p(z) quantiles, recalibration and the eligibility
   score included) against the network alone through plain `keras_model.predict(x)` (Keras'
   defaults, batch 32: what a user types) and `keras_model.predict(x, batch_size=1024)`, on the same
   spectra already in memory, in the same process; each as a ratio (> 1: xpz predict is faster).
   With `--breakdown`, also the parts of xpz predict's work on the same spectra: the compiled network
   call (`xpz.model.inference.predict_array`), the p(z) post-processing, the eligibility score
   (`xpz.model.ood_fast.fast_score`, and the reference `OodDensity.score`), reading the fluxes from Parquet.
2. Peak memory (max RSS of the whole process, from wait4) of `xpz predict` on a 2,000,000-row
   Parquet input, run as a subprocess (target: < 2 GiB).
3. Dask speed-up: the same partitioned catalogue predicted by one process and by a local Dask
   cluster of 2 worker processes (TensorFlow default threads, then 1 thread each), models already
   loaded in both; also checks that the results are bit-identical.

Inputs are cheap: a few thousand generated spectra tiled (with unique source_ids), written in chunks
to a temporary Parquet. Weights are untrained (speed does not depend on them); the recalibration and
eligibility layers are fitted on the generated spectra (3/4 as training, 1/4 as validation). The MLflow store is a
temporary sqlite file; nothing is written to the repository.

    python benchmarks/bench_predict.py                      # the full run
    python benchmarks/bench_predict.py --n 20000 --memory-rows 500000 --dask-rows 40000   # moderate
    python benchmarks/bench_predict.py --n 40000 --memory-rows 0 --dask-rows 0 --models default --breakdown
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from _cli import count, run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

quiet_telemetry()

from xpz.data.io import schema  # noqa: E402
from xpz.spectra import FLUX_COLUMNS  # noqa: E402


def base_catalogue(n: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(fluxes (n, 186) float32, true redshifts (n,)) of generated galaxies."""
    from xpz.config import DataConfig
    from xpz.data.synthetic import generate
    from xpz.spectra import flux_matrix

    frame = generate(DataConfig(n_galaxies=n, seed=seed, chunk_size=n))
    return flux_matrix(frame), frame["z"].to_numpy()


def base_spectra(n: int, seed: int = 42) -> np.ndarray:
    return base_catalogue(n, seed)[0]


def write_tiled(path: Path, base: np.ndarray, rows: int, chunk: int = 65536, first_id: int = 0) -> Path:
    """`rows` spectra (the base tiled) to Parquet, one row group per chunk (bounded memory)."""
    sch = schema(with_target=False)
    with pq.ParquetWriter(path, sch) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            idx = np.arange(start, start + n) % len(base)
            arrays = [pa.array(np.arange(start, start + n, dtype=np.int64) + first_id)]
            block = base[idx]
            arrays += [pa.array(block[:, j]) for j in range(block.shape[1])]
            writer.write_table(pa.Table.from_arrays(arrays, schema=sch))
    return path


def register(root: Path, name: str, keras_model, example: np.ndarray) -> str:
    import mlflow

    from xpz import tracking
    from xpz.config import TrackingConfig

    tr = tracking.configure(
        TrackingConfig(experiment="xpz-bench", registered_model=name, artifact_location=str(root / "mlruns")),
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
    )
    with tracking.run(tr, f"bench-{name}") as run_id:
        logged = tracking.log_model(tr, run_id, keras_model, example[:5])
        tracking.register(tr, run_id, logged, {tr.primary_metric: 0.0})
    mlflow.set_tracking_uri(tr.tracking_uri)
    return tr.tracking_uri


def build(arch: str, base: np.ndarray, z: np.ndarray | None = None):
    """(model, trainable parameters); with the generated spectra's redshifts `z`, the model carries
    the recalibration, conformal-interval and eligibility layers fitted on them, as a trained model does."""
    import keras

    from xpz.config import load_config
    from xpz.model.architectures import build_model, build_seed_model, flat_hyperparameters, trainable_params
    from xpz.model.scaling import fit_model_scaler, fit_scaler
    from xpz.model.train import ensemble_model

    keras.utils.set_random_seed(0)
    params = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = params.model
    if arch == "seed":
        model = build_seed_model(fit_scaler(base, normalize=False), cfg)
    else:  # the default: `train.members` networks averaged into one model, as `xpz.model.train` builds it
        scaler = fit_model_scaler(base, cfg)
        model = ensemble_model([build_model(flat_hyperparameters(cfg.default), cfg, scaler)
                                for _ in range(params.train.members)])  # fmt: skip
    n_params = trainable_params(model)
    if z is not None:
        from xpz.model.ood import fit_eligibility
        from xpz.model.posthoc import fit_recalibration

        cut = len(base) * 3 // 4
        if params.coverage.enabled:
            model, _ = fit_recalibration(model, base[cut:], z[cut:], params.coverage)
            if params.coverage.conformal:
                from xpz.model.posthoc import fit_conformal

                model, _ = fit_conformal(model, base[cut:], z[cut:], params.coverage)
        if params.eligibility.enabled:
            model, _ = fit_eligibility(model, base[:cut], base[cut:], params.eligibility)
    return model, n_params


def best_time(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls (other processes only slow a run down)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def breakdown(args, model, x: np.ndarray, source: Path) -> None:
    """The parts of xpz predict's work on the same spectra, best of `--repeats` each."""
    from xpz.model import posterior
    from xpz.model.architectures import posterior_layer
    from xpz.model.inference import predict_array
    from xpz.model.ood import ood_layer
    from xpz.model.ood_fast import fast_score

    out = predict_array(model, x)
    head, ood = posterior_layer(model), ood_layer(model)

    def post() -> None:  # what predict_posterior does with the network's output (the same function)
        posterior._redshifts(model, head, out, x)

    parts = {
        "network (predict_array, batch 1024)": lambda: predict_array(model, x),
        "p(z): recalibration, z, conformal interval": post,
        "read fluxes (Parquet)": lambda: pd.read_parquet(source, columns=list(FLUX_COLUMNS)).to_numpy(
            np.float32
        ),
    }
    if ood is not None:
        parts["eligibility score (fast_score)"] = lambda: fast_score(ood, x)
        parts["eligibility score (OodDensity.score, reference)"] = lambda: ood.score(x)
    for name, fn in parts.items():
        s = best_time(fn, args.repeats)
        print(f"[breakdown] {name:<48} {s:6.2f} s ({args.n / s:,.0f} spectra/s)", flush=True)


def throughput(args, work: Path, base: np.ndarray, z: np.ndarray) -> dict[str, str]:
    from xpz.serving.batch import load_predictor, predict_file

    source = write_tiled(work / "bench_in.parquet", base, args.n)
    x = pd.read_parquet(source, columns=list(FLUX_COLUMNS)).to_numpy(np.float32)
    uris = {}
    for arch in args.models:
        model, n_params = build(arch, base, z)
        uri = register(work, f"xpz-bench-{arch}", model, base)
        uris[arch] = uri
        model.predict(x[:2048], batch_size=1024, verbose=0)  # warm-up (tracing)
        model.predict(x[:2048], verbose=0)
        t = time.perf_counter()
        predictor = load_predictor(f"models:/xpz-bench-{arch}@champion", uri)
        load_s = time.perf_counter() - t
        predictor.predict(x[:2048])  # warm-up of the loaded copy
        default, plain, ours, result = float("inf"), float("inf"), float("inf"), None
        for rep in range(args.repeats):  # alternated, best of each: other processes only slow a run down
            t = time.perf_counter()
            model.predict(x, verbose=0)
            default = min(default, time.perf_counter() - t)
            t = time.perf_counter()
            model.predict(x, batch_size=1024, verbose=0)
            plain = min(plain, time.perf_counter() - t)
            out = work / f"pred_{arch}_{rep}.parquet"
            result = predict_file(source, out, predictor, chunk_size=args.chunk_size, progress=False)
            assert result.rows == args.n
            ours = min(ours, result.seconds)
        print(
            f"[speed] {arch:<7} ({n_params:,} params) on {args.n:,} spectra, best of {args.repeats}: "
            f"model.predict(x) (Keras defaults, batch 32) {args.n / default:,.0f} spectra/s ({default:.1f} s) | "
            f"model.predict(batch 1024) {args.n / plain:,.0f} spectra/s ({plain:.1f} s) | "
            f"xpz predict (Parquet -> Parquet, pyfunc, compiled inference, p(z) + eligibility) "
            f"{args.n / ours:,.0f} spectra/s ({ours:.1f} s; model load {load_s:.1f} s)",
            flush=True,
        )
        print(
            f"[speed] {arch:<7} xpz predict vs model.predict(x): {default / ours:.2f}x | "
            f"xpz predict vs model.predict(x, batch_size=1024): {plain / ours:.2f}x",
            flush=True,
        )
        if args.breakdown:
            breakdown(args, model, x, source)
    return uris


def peak_memory(args, work: Path, base: np.ndarray, z: np.ndarray, uris: dict[str, str]) -> None:
    arch = args.memory_model
    if arch not in uris:
        model, _ = build(arch, base, z)
        uris[arch] = register(work, f"xpz-bench-{arch}", model, base)
    source = write_tiled(work / "big.parquet", base, args.memory_rows)
    size = source.stat().st_size
    out = work / "big_pred.parquet"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uris[arch]}
    cmd = [str(Path(sys.executable).parent / "xpz"), "predict", str(source), "--model", f"models:/xpz-bench-{arch}@champion",
           "--out", str(out), "--no-progress", "--chunk-size", str(args.chunk_size)]  # fmt: skip
    t = time.perf_counter()
    with (work / "mem.out").open("w") as fo, (work / "mem.err").open("w") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    stdout, stderr = (work / "mem.out").read_text(), (work / "mem.err").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"xpz predict failed:\n{stderr[-3000:]}")
    rows = pq.ParquetFile(out).metadata.num_rows
    peak_gib = usage.ru_maxrss / 2**20  # KiB on Linux
    verdict = "OK" if peak_gib < 2 else "OVER"
    print(
        f"[memory] xpz predict ({arch}) on {rows:,} rows ({size / 2**30:.2f} GiB Parquet in, "
        f"{args.memory_rows * 186 * 4 / 2**30:.2f} GiB of float32 fluxes): peak RSS {peak_gib:.2f} GiB "
        f"[{verdict}: target < 2 GiB], wall {wall:.0f} s incl. start-up ({stdout.strip().splitlines()[-1]})",
        flush=True,
    )


def _warm(model: str, uri: str) -> int:
    from xpz.serving.batch import cached_predictor

    p = cached_predictor(model, uri)
    p.predict(np.ones((2048, len(FLUX_COLUMNS)), np.float32))
    return os.getpid()


def _predict_partition(path: str, out: str, model: str, uri: str, chunk_size: int) -> int:
    from xpz.serving.batch import cached_predictor, predict_file

    return predict_file(path, out, cached_predictor(model, uri), chunk_size=chunk_size, progress=False).rows


def dask_speedup(args, work: Path, base: np.ndarray, z: np.ndarray, uris: dict[str, str]) -> None:
    from distributed import Client, LocalCluster

    from xpz.serving.batch import load_predictor, predict_file

    arch = args.dask_model
    if arch not in uris:
        model, _ = build(arch, base, z)
        uris[arch] = register(work, f"xpz-bench-{arch}", model, base)
    model_ref, uri = f"models:/xpz-bench-{arch}@champion", uris[arch]
    catalogue = work / "catalogue"
    catalogue.mkdir(exist_ok=True)
    per = args.dask_rows // args.partitions
    parts = [
        write_tiled(catalogue / f"part-{i:03d}.parquet", base, per, first_id=i * per)
        for i in range(args.partitions)
    ]

    predictor = load_predictor(model_ref, uri)
    predictor.predict(base[:2048])
    single = predict_file(
        catalogue, work / "single.parquet", predictor, chunk_size=args.chunk_size, progress=False
    )
    reference = pd.read_parquet(single.out)
    print(
        f"[dask] {arch} on {single.rows:,} spectra in {len(parts)} partitions: one process (TF default threads) "
        f"{single.seconds:.1f} s ({single.spectra_per_s:,.0f}/s)",
        flush=True,
    )
    for tf_threads in (None, 1):
        env = {} if tf_threads is None else {"TF_NUM_INTRAOP_THREADS": str(tf_threads), "TF_NUM_INTEROP_THREADS": "1",
                                             "OMP_NUM_THREADS": str(tf_threads)}  # fmt: skip
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=env
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_warm, model_ref, uri)  # each worker loads the model once, as in the flow
            out_dir = work / f"dask_out_{tf_threads}"
            out_dir.mkdir(exist_ok=True)
            t = time.perf_counter()
            futures = [
                client.submit(
                    _predict_partition,
                    str(p),
                    str(out_dir / p.name),
                    model_ref,
                    uri,
                    args.chunk_size,
                    pure=False,
                )
                for p in parts
            ]
            rows = sum(client.gather(futures))
            dask_s = time.perf_counter() - t
        distributed = pd.concat([pd.read_parquet(out_dir / p.name) for p in parts], ignore_index=True)
        same = distributed.equals(reference)
        close = float((distributed["z"] - reference["z"]).abs().max())
        label = "TF default threads" if tf_threads is None else f"{tf_threads} TF thread"
        print(
            f"[dask] LocalCluster 2 workers x {label}: {dask_s:.1f} s ({rows / dask_s:,.0f}/s), "
            f"speed-up x{single.seconds / dask_s:.2f} | bit-identical to one process: {same} (max |dz| {close:.1e})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=count(1), default=200_000, help="spectra for the throughput test")
    parser.add_argument("--models", default="seed,default", help="architectures for the throughput test")
    parser.add_argument(
        "--memory-rows", type=count(0), default=2_000_000, help="rows for the peak-memory test (0: skip)"
    )
    parser.add_argument(
        "--memory-model", default="default", help="architecture for the memory test (seed, default)"
    )
    parser.add_argument(
        "--dask-rows", type=count(0), default=200_000, help="rows for the Dask test (0: skip)"
    )
    parser.add_argument("--dask-model", default="default")
    parser.add_argument("--partitions", type=count(1), default=8)
    parser.add_argument("--chunk-size", type=count(1), default=16384)
    parser.add_argument("--base", type=count(1), default=4000, help="generated spectra that are tiled")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--repeats", type=count(1), default=2, help="timed passes of each predictor (best is printed)"
    )
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of xpz predict's work")
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]

    import tensorflow as tf

    print(
        f"[env] {platform.node()} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"TF {tf.__version__}, GPUs {len(tf.config.list_physical_devices('GPU'))}",
        flush=True,
    )
    from xpz.hostinfo import print_host

    print_host()  # CPU model, sgemm GFLOP/s, the reference network's training samples/s: compare hosts as ratios
    with tempfile.TemporaryDirectory(prefix="xpz-bench-predict-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        base, z = base_catalogue(args.base)
        print(
            f"[input] {len(base):,} generated spectra in {time.perf_counter() - t:.1f} s, tiled as needed",
            flush=True,
        )
        uris = throughput(args, work, base, z) if args.n and args.models else {}
        if args.memory_rows:
            peak_memory(args, work, base, z, uris)
        if args.dask_rows:
            dask_speedup(args, work, base, z, uris)
    print(f"[env] load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    run_main(main)
