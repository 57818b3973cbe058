"""Streaming batch prediction: spectra files of any size -> a predictions Parquet file.

    chunks of the input (`xpz.io_stream`: Parquet row batches, CSV/ECSV blocks converted by the
    importer's code) -> the model, loaded once (an MLflow pyfunc from `models:/<name>@<alias>`,
    `models:/<name>/<version>`, `runs:/<run_id>/model`, a local pyfunc folder, or a `.keras` file)
    -> `source_id, z, z_lower, z_upper, model_name, model_version` appended to a Parquet file via
    pyarrow's ParquetWriter at a temporary path, renamed onto the output only when every row is done.

Memory is bounded by the chunk size (a reader thread prefetches at most `PREFETCH` chunks), never by
the input size.

Bit-identical results whatever the chunking: on CPU a row's output depends (in the last bits) on its
position inside the Keras batch. Rows are therefore always fed to the model in whole batches of the
model's batch size (1024), counted from the first row of each input file, the last one padded with
copies of the last row (the padding outputs are dropped). So `--chunk-size`, a reader's row groups
or a Dask partitioning into files never changes a single bit of the predictions.

An alias is resolved once to a version (`models:/<name>/<version>` is what is loaded), so a
promotion while a long job runs cannot mix two models in one output.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xpz.errors import InputError
from xpz.io import atomic_path
from xpz.io_stream import (
    DEFAULT_CHUNK_SIZE,
    SpectraChunk,
    check_file,
    count_rows,
    iter_spectra,
    list_partitions,
    resolve_format,
)
from xpz.spectra import ID_COLUMN, N_FLUX

DEFAULT_MODEL_BATCH = 1024
PREFETCH = 2  # chunks read ahead by the reader thread
PREDICTION_COLUMNS = ("z", "z_lower", "z_upper")
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(ID_COLUMN, pa.int64()),
        pa.field("z", pa.float64()),
        pa.field("z_lower", pa.float64()),
        pa.field("z_upper", pa.float64()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
    ]
)


# ------------------------------------------------------------------------------------ model


@dataclass
class Predictor:
    """A model loaded once: `predict(fluxes) -> DataFrame[z, z_lower, z_upper]`, batch-aligned."""

    name: str
    version: str
    uri: str  # what was loaded (an alias resolved to its version)
    batch_size: int
    _predict: Callable[[np.ndarray], object]

    def predict(self, fluxes: np.ndarray) -> pd.DataFrame:
        """Predictions for (n, 186) fluxes, fed in whole batches (the last padded; see module doc)."""
        x = np.ascontiguousarray(fluxes, dtype=np.float32)
        n = len(x)
        if n == 0:
            return pd.DataFrame({c: np.empty(0) for c in PREDICTION_COLUMNS})
        padded = -(-n // self.batch_size) * self.batch_size
        if padded > n:
            x = np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)])
        return _as_prediction_frame(self._predict(x), padded).iloc[:n].reset_index(drop=True)


def _as_prediction_frame(output: object, n: int) -> pd.DataFrame:
    """A pyfunc's output (xpz: DataFrame[z, z_lower, z_upper]; others: z alone) as the three columns."""
    if isinstance(output, pd.DataFrame):
        frame = output if "z" in output.columns else output.rename(columns={output.columns[0]: "z"})
    else:
        frame = pd.DataFrame({"z": np.asarray(output, dtype=np.float64).reshape(n, -1)[:, 0]})
    out = pd.DataFrame({c: frame[c].to_numpy(np.float64) if c in frame else np.full(n, np.nan) for c in PREDICTION_COLUMNS})
    if len(out) != n:
        raise RuntimeError(f"model returned {len(out)} predictions for {n} spectra")
    return out


def _client(tracking_uri: str | None):
    """A client of the store; a local sqlite store must exist (MLflow would create an empty one)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():
            raise InputError(
                f"no MLflow store at {uri} ({path.absolute()} does not exist); "
                "set MLFLOW_TRACKING_URI or --tracking-uri to the store holding the model"
            )
    return MlflowClient(tracking_uri=uri)


def _store(tracking_uri: str | None) -> str:
    import mlflow

    return tracking_uri or mlflow.get_tracking_uri()


def _aliases(client, name: str) -> str:
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except Exception:
        return "unknown"
    return ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"


def _registered_names(client) -> str:
    try:
        names = [m.name for m in client.search_registered_models(max_results=20)]
    except Exception:
        return "unknown"
    return ", ".join(names) or "none"


def resolve_model(model: str, tracking_uri: str | None = None) -> tuple[str, str, str]:
    """(URI to load, model name, model version) for a model reference; `InputError` naming the
    alias, version, run or path that does not exist."""
    from mlflow.exceptions import MlflowException

    if model.startswith("models:/"):
        client = _client(tracking_uri)
        ref = model[len("models:/"):].strip("/")
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                try:
                    client.get_registered_model(name)
                except MlflowException:
                    raise InputError(
                        f"model {model!r}: no registered model {name!r} in {_store(tracking_uri)} "
                        f"(registered: {_registered_names(client)})"
                    ) from None
                try:
                    version = str(client.get_model_version_by_alias(name, alias).version)
                except MlflowException:
                    raise InputError(
                        f"model {model!r}: registered model {name!r} has no alias {alias!r} "
                        f"(its aliases: {_aliases(client, name)})"
                    ) from None
                return f"models:/{name}/{version}", name, version
            if "/" in ref:
                name, version = ref.rsplit("/", 1)
                try:
                    client.get_model_version(name, version)
                except MlflowException:
                    raise InputError(
                        f"model {model!r}: registered model {name!r} has no version {version!r} "
                        f"in {_store(tracking_uri)}"
                    ) from None
                return model, name, version
            try:  # a LoggedModel id (models:/m-...)
                logged = client.get_logged_model(ref)
            except MlflowException:
                raise InputError(
                    f"model {model!r}: no logged model {ref!r} in {_store(tracking_uri)}; use "
                    f"models:/<name>@<alias> or models:/<name>/<version> (registered: {_registered_names(client)})"
                ) from None
            return model, logged.name, ref
        except InputError:
            raise
        except MlflowException as err:
            raise InputError(f"model {model!r}: the tracking store {_store(tracking_uri)} is not usable: {err.message}") from None
    if model.startswith("runs:/"):
        parts = model[len("runs:/"):].strip("/").split("/", 1)
        from mlflow.exceptions import MlflowException

        try:
            _client(tracking_uri).get_run(parts[0])
        except MlflowException:
            raise InputError(f"model {model!r}: no run {parts[0]!r} in {_store(tracking_uri)}") from None
        return model, parts[1] if len(parts) > 1 else "model", parts[0]
    path = Path(model)
    if not path.exists():
        raise InputError(
            f"model {model!r}: not found (expected models:/<name>@<alias>, models:/<name>/<version>, "
            "runs:/<run_id>/<path>, an MLflow model folder or a .keras file)"
        )
    return str(path), path.stem if path.suffix == ".keras" else path.name, ""


@contextlib.contextmanager
def use_tracking_uri(uri: str | None) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to `uri` for a block (no-op for None), then restored
    exactly: `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which is put back as it was."""
    if not uri:
        yield
        return
    import mlflow
    from mlflow.tracking._tracking_service import utils as _tracking_utils

    saved_uri = _tracking_utils._tracking_uri  # None when never set
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def load_predictor(model: str, tracking_uri: str | None = None) -> Predictor:
    """Load a model once (see `resolve_model` for the accepted references)."""
    uri, name, version = resolve_model(model, tracking_uri)
    if uri.endswith(".keras") and Path(uri).is_file():
        import keras

        import xpz.model  # noqa: F401  (registers the custom layers)
        import xpz.scaling  # noqa: F401
        from xpz.predict import predict_redshift

        keras_model = keras.saving.load_model(uri, compile=False)
        batch = DEFAULT_MODEL_BATCH
        return Predictor(name, version, uri, batch, lambda x: predict_redshift(keras_model, x, batch_size=batch))

    import mlflow

    with use_tracking_uri(tracking_uri):
        try:
            pyfunc = mlflow.pyfunc.load_model(uri)
        except Exception as err:
            raise InputError(f"model {model!r}: cannot load {uri}: {err}") from None
    try:
        batch = int(getattr(pyfunc.unwrap_python_model(), "batch_size", DEFAULT_MODEL_BATCH))
    except Exception:  # not a python_model flavour
        batch = DEFAULT_MODEL_BATCH
    return Predictor(name, version, uri, batch, pyfunc.predict)


@lru_cache(maxsize=4)
def cached_predictor(model: str, tracking_uri: str | None = None) -> Predictor:
    """One loaded model per process and reference (Dask workers reuse it across partitions)."""
    return load_predictor(model, tracking_uri)


# ------------------------------------------------------------------------------ streaming


def _prefetch(chunks: Iterator[SpectraChunk], depth: int = PREFETCH) -> Iterator[SpectraChunk]:
    """Read (and parse) the next chunks in a thread while the model works on the current one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(done)
        except BaseException as err:  # re-raised in the consumer
            put(err)

    thread = threading.Thread(target=produce, name="xpz-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def predict_chunks(chunks: Iterable[SpectraChunk], predictor: Predictor) -> Iterator[pa.Table]:
    """Predictions for a stream of chunks from one file, as tables in the output schema.

    Rows go to the model in whole batches counted from the stream's first row (a remainder of
    fewer than `batch_size` rows waits for the next chunk), so the chunking never matters."""
    bs = predictor.batch_size
    ids_left = np.empty(0, dtype=np.int64)
    flux_left = np.empty((0, N_FLUX), dtype=np.float32)
    for chunk in chunks:
        ids = np.concatenate([ids_left, chunk.source_id]) if len(ids_left) else chunk.source_id
        flux = np.concatenate([flux_left, chunk.fluxes]) if len(flux_left) else chunk.fluxes
        k = (len(ids) // bs) * bs
        if k:
            yield _table(ids[:k], predictor.predict(flux[:k]), predictor)
        ids_left, flux_left = ids[k:], flux[k:]
    if len(ids_left):
        yield _table(ids_left, predictor.predict(flux_left), predictor)


def _table(ids: np.ndarray, pred: pd.DataFrame, predictor: Predictor) -> pa.Table:
    n = len(ids)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            *(pa.array(pred[c].to_numpy(np.float64), pa.float64()) for c in PREDICTION_COLUMNS),
            pa.repeat(pa.scalar(predictor.name, pa.string()), n),
            pa.repeat(pa.scalar(predictor.version, pa.string()), n),
        ],
        schema=OUTPUT_SCHEMA,
    )


@dataclass
class PredictResult:
    out: Path
    rows: int
    model_name: str
    model_version: str
    model_uri: str
    seconds: float  # reading, predicting and writing (model loading excluded)
    files: int = 1
    load_seconds: float = 0.0

    @property
    def spectra_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def predict_file(
    source: Path | str,
    out: Path | str,
    model: str | Predictor,
    fmt: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Predict every spectrum of `source` (a file, or a folder of partition files, read in path
    order) into the Parquet file `out`. Nothing is written at `out` unless every row succeeded."""
    from tqdm.auto import tqdm

    files = list_partitions(source) if Path(source).is_dir() else [Path(source)]
    for path in files:  # cheap checks of every file before anything heavy
        check_file(path)
        resolve_format(path, fmt)
    # The reader starts before the model loads: a bad first chunk fails fast, and the first chunks
    # are parsed while the model loads.
    streams = [_prefetch(iter_spectra(files[0], fmt, chunk_size))]
    first = next(streams[0], None)
    if first is None:  # the readers raise on empty input; this guards any other reader
        raise InputError(f"{files[0]}: the file holds no rows")
    loading = time.perf_counter()
    try:
        predictor = model if isinstance(model, Predictor) else load_predictor(model, tracking_uri)
    except BaseException:
        streams[0].close()
        raise
    start = time.perf_counter()
    totals = [count_rows(f, fmt) for f in files]
    total = None if any(t is None for t in totals) else sum(totals)
    rows = 0
    out = Path(out)
    with atomic_path(out) as tmp, contextlib.ExitStack() as stack:
        stack.callback(streams[0].close)
        writer = stack.enter_context(pq.ParquetWriter(tmp, OUTPUT_SCHEMA))
        bar = stack.enter_context(
            tqdm(total=total, unit=" spectra", unit_scale=True, disable=not progress, desc=f"predict {Path(source).name}")
        )
        for i, path in enumerate(files):
            chunks = itertools.chain([first], streams[0]) if i == 0 else _prefetch(iter_spectra(path, fmt, chunk_size))
            for table in predict_chunks(chunks, predictor):
                writer.write_table(table)
                rows += table.num_rows
                bar.update(table.num_rows)
        writer.close()
    return PredictResult(
        out, rows, predictor.name, predictor.version, predictor.uri, time.perf_counter() - start, len(files),
        load_seconds=start - loading,
    )


def default_tracking_uri(configured: str | None) -> str | None:
    """`MLFLOW_TRACKING_URI` wins over params.yaml (`tracking.uri`), as in `xpz.tracking`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured
