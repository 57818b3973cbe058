"""Prefect flow `xpz-batch-predict`: batch prediction over a partitioned catalogue on Dask.

Thin wiring of `xpz.serving.batch`: one Prefect task per partition file, run by prefect-dask's
`DaskTaskRunner` on a local cluster (default: 2 worker processes, 1 Dask thread each) or on an existing
Dask scheduler (`--address tcp://scheduler:8786`, e.g. dask-jobqueue, dask-kubernetes, Coiled).

- The model alias is resolved once, in the flow, to a version (`models:/<name>/<version>`): all
  partitions use the same model even if `champion` moves while the flow runs.
- Each worker process loads the model once (`cached_predictor`) and reuses it for its partitions.
- Partition `<catalogue>/<relative path>` is written to `<out_dir>/<relative path>.parquet`
  atomically (a retried or crashed task never leaves a partial file); `pd.read_parquet(out_dir)`
  reads the whole result.
- Exactly the single-process results: a partition's rows go to the model in whole batches counted
  from its own first row, as `xpz predict <catalogue folder>` does file by file, so the two give
  bit-identical predictions (tests/test_scaleout.py) when the workers run TensorFlow with the same
  intra-op thread count (the default; `--tf-threads 1` is faster with one worker per core and then
  equals a single process run with TF_NUM_INTRAOP_THREADS=1).
- Prefect API: PREFECT_API_URL when set (workers on other machines need it too), else one temporary
  local server shared by the flow and the local workers.

Workers need the xpz package (the same environment) and read access to the catalogue, the output
folder and the MLflow store (a server URI, or a shared sqlite file / artifact folder).

    python flows/batch_predict_dask.py CATALOGUE --out-dir predictions/ \
        --model models:/xpz-redshift@champion [--address tcp://host:8786 | --workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Without PREFECT_API_URL Prefect starts a temporary local server; on a busy machine its start-up
# can exceed Prefect's 20 s default (set before prefect is imported: settings load then).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, task, unmapped  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from xpz.env import quiet_telemetry  # noqa: E402

quiet_telemetry()

DEFAULT_MODEL = "models:/xpz-redshift@champion"


def output_path(partition: Path, catalogue: Path, out_dir: Path) -> Path:
    """`<out_dir>/<path of the partition relative to the catalogue, suffix .parquet>`."""
    relative = partition.relative_to(catalogue) if catalogue.is_dir() else Path(partition.name)
    return out_dir / relative.with_suffix(".parquet")


@task(name="predict-partition", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def predict_partition(
    partition: str, out: str, model_uri: str, tracking_uri: str | None, fmt: str, chunk_size: int
) -> dict[str, Any]:
    """Predict one partition file into `out` (the model is loaded once per worker process)."""
    from xpz.serving.batch import cached_predictor, predict_file

    predictor = cached_predictor(model_uri, tracking_uri)
    result = predict_file(partition, out, predictor, fmt=fmt, chunk_size=chunk_size, progress=False)
    return {
        "partition": partition,
        "out": out,
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
        "pid": os.getpid(),
    }


@flow(name="xpz-batch-predict", log_prints=True)
def batch_predict(
    catalogue: str,
    out_dir: str,
    model: str = DEFAULT_MODEL,
    tracking_uri: str | None = None,
    fmt: str = "auto",
    chunk_size: int = 16384,
) -> dict[str, Any]:
    """Predict every partition of `catalogue` (a folder of Parquet/CSV/ECSV files) into `out_dir`."""
    from xpz.data.stream import list_partitions
    from xpz.serving.batch import default_tracking_uri, resolve_model

    start = time.perf_counter()
    tracking_uri = tracking_uri or default_tracking_uri(None)  # the argument, else MLFLOW_TRACKING_URI
    uri, name, version = resolve_model(model, tracking_uri)  # alias -> version, once
    root, out_root = Path(catalogue), Path(out_dir)
    parts = list_partitions(root)
    outs = [str(output_path(p, root, out_root)) for p in parts]
    futures = predict_partition.map(
        [str(p) for p in parts],
        outs,
        unmapped(uri),
        unmapped(tracking_uri),
        unmapped(fmt),
        unmapped(chunk_size),
    )
    results = [f.result() for f in futures]
    rows = sum(r["rows"] for r in results)
    seconds = time.perf_counter() - start
    print(f"predicted {rows:,} spectra in {len(parts)} partitions with {name} v{version} in {seconds:.1f} s")
    return {"model_name": name, "model_version": version, "model_uri": uri, "rows": rows,
            "seconds": seconds, "partitions": results}  # fmt: skip


def dask_task_runner(
    address: str | None = None,
    workers: int = 2,
    tf_threads: int | None = None,
    env: dict[str, str] | None = None,
) -> DaskTaskRunner:
    """A runner on an existing scheduler (`address`) or on a local cluster of worker processes
    (one Dask thread each; `env` is added to the workers' environment).

    `tf_threads` sets TensorFlow's intra-op threads per worker (TF_NUM_INTRAOP_THREADS; e.g. 1 with
    one worker per core). None keeps TensorFlow's default, as in a single `xpz predict` process:
    TensorFlow's CPU kernels round differently with another thread count (last float32 bits), so
    bit-identical results need the same setting on both sides."""
    if address:
        return DaskTaskRunner(address=address)
    worker_env = {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        **(env or {}),
    }
    if tf_threads:
        worker_env.update(
            TF_NUM_INTRAOP_THREADS=str(tf_threads),
            TF_NUM_INTEROP_THREADS="1",
            OMP_NUM_THREADS=str(tf_threads),
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",
            "env": worker_env,
        },  # fmt: skip
    )


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """The Prefect API for the flow and its Dask workers: PREFECT_API_URL when configured, else one
    temporary local server (what Prefect starts on its own), shared by the workers: without it each
    worker process would start a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send the flow's last logs while the server is up
    finally:
        server.stop()


def run(
    catalogue: str | Path,
    out_dir: str | Path,
    model: str = DEFAULT_MODEL,
    tracking_uri: str | None = None,
    address: str | None = None,
    workers: int = 2,
    tf_threads: int | None = None,
    fmt: str = "auto",
    chunk_size: int = 16384,
) -> dict[str, Any]:
    """Run the flow on a local Dask cluster (or the scheduler at `address`)."""
    with prefect_api() as api_url:
        env = {"PREFECT_API_URL": api_url} if api_url else {}
        runner = dask_task_runner(address, workers, tf_threads, env)
        return batch_predict.with_options(task_runner=runner)(
            str(catalogue),
            str(out_dir),
            model=model,
            tracking_uri=tracking_uri,
            fmt=fmt,
            chunk_size=chunk_size,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("catalogue", help="folder of partition files (Parquet, seed CSV, Gaia XP CSV/ECSV)")
    parser.add_argument("--out-dir", required=True, help="where the per-partition predictions go")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--workers", type=int, default=2, help="local cluster: worker processes")
    parser.add_argument(
        "--tf-threads",
        type=int,
        default=None,
        help="TensorFlow threads per local worker (default: TensorFlow's; see dask_task_runner)",
    )
    parser.add_argument("--format", dest="fmt", default="auto")
    parser.add_argument("--chunk-size", type=int, default=16384)
    parser.add_argument("--summary", default=None, help="write the flow's summary here (JSON)")
    args = parser.parse_args(argv)
    from xpz.errors import InputError

    try:
        summary = run(args.catalogue, args.out_dir, args.model, args.tracking_uri, args.address, args.workers,
                      args.tf_threads, args.fmt, args.chunk_size)  # fmt: skip
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
