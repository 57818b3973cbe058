"""Streaming batch prediction: spectra files of any size -> a predictions Parquet file.

    chunks of the input (`xpz.data.stream`: Parquet row batches, CSV/ECSV blocks converted by the
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
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xpz.errors import InputError
from xpz.files import atomic_path
from xpz.data.stream import (
    DEFAULT_CHUNK_SIZE,
    SpectraChunk,
    check_file,
    count_rows,
    iter_spectra,
    list_partitions,
    resolve_format,
)
from xpz.serving.models import (  # noqa: F401  (re-exported: the CLI, flows and tests load models here)
    DEFAULT_MODEL_BATCH,
    PREDICTION_COLUMNS,
    Predictor,
    cached_predictor,
    default_tracking_uri,
    load_predictor,
    resolve_model,
    use_tracking_uri,
)
from xpz.spectra import ID_COLUMN, N_FLUX

PREFETCH = 2  # chunks read ahead by the reader thread
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(ID_COLUMN, pa.int64()),
        pa.field("z", pa.float64()),
        pa.field("z_lower", pa.float64()),
        pa.field("z_upper", pa.float64()),
        pa.field("ood_score", pa.float64()),
        pa.field("eligible", pa.bool_()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
    ]
)


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


def predict_chunks(chunks: Iterable[SpectraChunk], predictor: Predictor, pdf_writer=None) -> Iterator[pa.Table]:
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
            yield _table(ids[:k], _predict(predictor, ids[:k], flux[:k], pdf_writer), predictor)
        ids_left, flux_left = ids[k:], flux[k:]
    if len(ids_left):
        yield _table(ids_left, _predict(predictor, ids_left, flux_left, pdf_writer), predictor)


def _predict(predictor: Predictor, ids: np.ndarray, flux: np.ndarray, pdf_writer) -> pd.DataFrame:
    """Predictions of one batch-aligned block; with a `pdf_metrics.PdfWriter`, its p(z) written too."""
    if pdf_writer is None:
        return predictor.predict(flux)
    pred, edges, cdf = predictor.predict_with_pdf(flux)
    ancil = {"source_id": ids, **{c: pred[c].to_numpy() for c in pred.columns}}
    pdf_writer.write(edges, cdf, ancil)
    return pred


def _table(ids: np.ndarray, pred: pd.DataFrame, predictor: Predictor) -> pa.Table:
    n = len(ids)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            *(pa.array(pred[c].to_numpy(np.float64), pa.float64()) for c in PREDICTION_COLUMNS),
            pa.array(pred["ood_score"].to_numpy(np.float64), pa.float64()),
            pa.array(pred["eligible"].to_numpy(bool), pa.bool_()),
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
    pdf: Path | str | None = None,
) -> PredictResult:
    """Predict every spectrum of `source` (a file, or a folder of partition files, read in path
    order) into the Parquet file `out`. Nothing is written at `out` unless every row succeeded.
    With `pdf`, each spectrum's p(z) also goes to that qp HDF5 file (`xpz.model.pdf_metrics`), in
    chunks, same row order, ancillary columns source_id, z, z_lower, z_upper, ood_score, eligible."""
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
    pdf_writer = None
    if pdf is not None:
        from xpz.model.pdf_metrics import PdfWriter

        if predictor.keras_model is None:
            raise InputError(f"model {predictor.uri}: not an xpz Keras model, so it gives no p(z) (--pdf)")
        if total is None:  # qp's HDF5 layout needs the row count up front: count by streaming once
            total = sum(sum(len(c.source_id) for c in iter_spectra(f, fmt, chunk_size)) for f in files)
        pdf_writer = PdfWriter(pdf, total)
    rows = 0
    out = Path(out)
    with atomic_path(out) as tmp, contextlib.ExitStack() as stack:
        stack.callback(streams[0].close)
        if pdf_writer is not None:
            stack.callback(pdf_writer.abort)  # removes its temporary file unless closed
        writer = stack.enter_context(pq.ParquetWriter(tmp, OUTPUT_SCHEMA))
        bar = stack.enter_context(
            tqdm(total=total, unit=" spectra", unit_scale=True, disable=not progress, desc=f"predict {Path(source).name}")
        )
        for i, path in enumerate(files):
            chunks = itertools.chain([first], streams[0]) if i == 0 else _prefetch(iter_spectra(path, fmt, chunk_size))
            for table in predict_chunks(chunks, predictor, pdf_writer):
                writer.write_table(table)
                rows += table.num_rows
                bar.update(table.num_rows)
        writer.close()
        if pdf_writer is not None:
            pdf_writer.close()  # before the predictions are renamed into place
    return PredictResult(
        out, rows, predictor.name, predictor.version, predictor.uri, time.perf_counter() - start, len(files),
        load_seconds=start - loading,
    )
