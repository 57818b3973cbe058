"""Streaming batch prediction: spectra files of any size -> a predictions Parquet file.

    chunks of the input (`xpz.data.stream`: Parquet row batches, CSV/ECSV blocks converted by the
    importer's code) -> the model, loaded once (an MLflow pyfunc from `models:/<name>@<alias>`,
    `models:/<name>/<version>`, `runs:/<run_id>/model`, a local pyfunc folder, or a `.keras` file)
    -> `source_id, z, z_lower, z_upper, model_name, model_version, reject_reason` appended to a Parquet file via
    pyarrow's ParquetWriter at a temporary path, renamed onto the output only when every row is done.

One output row per input row: a Gaia XP source without a usable spectrum (`xpz.data.xpcont`), or any
row whose total flux is <= 0 (`xpz.spectra.nonpositive_total`), gets NaN, `eligible` false and its
`reject_reason`; `strict=True` makes any such source an `InputError` instead.

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
import tempfile
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xpz.data.archive import expand
from xpz.data.stream import (
    DEFAULT_CHUNK_SIZE,
    FORMATS,
    SpectraChunk,
    check_file,
    count_rows,
    iter_spectra,
    list_partitions,  # noqa: F401  (re-exported)
    resolve_format,
)
from xpz.errors import InputError
from xpz.files import atomic_path
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
from xpz.spectra import ID_COLUMN, N_FLUX, NO_TOTAL_FLUX_REASON, nonpositive_total

PREFETCH = 2  # chunks read ahead by the reader thread
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(ID_COLUMN, pa.int64()),
        pa.field("z", pa.float64()),
        pa.field("z_lower", pa.float64()),
        pa.field("z_upper", pa.float64()),
        pa.field("ood_score", pa.float64()),  # NaN where rejected or not assessed
        pa.field("eligible", pa.bool_()),  # false where rejected
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("reject_reason", pa.string()),  # null where predicted; else why z is NaN
    ]
)


# ------------------------------------------------------------------------------ streaming


def _prefetch(chunks: Iterator[SpectraChunk], depth: int = PREFETCH) -> Generator[SpectraChunk, None, None]:
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


def predict_chunks(
    chunks: Iterable[SpectraChunk], predictor: Predictor, pdf_writer=None
) -> Iterator[pa.Table]:
    """Predictions for a stream of chunks from one file, as tables in the output schema (one row per
    input row, in order; a rejected row gets NaN and its `reject_reason`). With a `pdf_writer`
    (`xpz.model.pdf_metrics.PdfWriter`), the p(z) of every predicted row is written too.

    Usable rows go to the model in whole batches counted from the stream's first usable row (a
    remainder of fewer than `batch_size` rows waits for the next chunk), so the chunking never matters."""
    bs = predictor.batch_size
    ids_left = np.empty(0, dtype=np.int64)  # every row not yet written
    why_left = np.empty(0, dtype=object)
    flux_left = np.empty((0, N_FLUX), dtype=np.float32)  # the usable ones among them
    for chunk in chunks:
        why = _reasons(chunk)
        ok = np.array([w is None for w in why], dtype=bool)
        ids = np.concatenate([ids_left, chunk.source_id])
        reasons = np.concatenate([why_left, why])
        flux = np.concatenate([flux_left, chunk.fluxes[ok]]) if len(flux_left) else chunk.fluxes[ok]
        k = (len(flux) // bs) * bs
        if k:
            usable = np.flatnonzero(np.array([w is None for w in reasons], dtype=bool))
            cut = usable[k - 1] + 1  # rows up to the k-th usable one are complete
            yield _table(
                ids[:cut],
                reasons[:cut],
                _predict(predictor, ids[usable[:k]], flux[:k], pdf_writer),
                predictor,
            )
            ids, reasons, flux = ids[cut:], reasons[cut:], flux[k:]
        ids_left, why_left, flux_left = ids, reasons, flux
    if len(ids_left):
        ok = np.array([w is None for w in why_left], dtype=bool)
        pred = (
            _predict(predictor, ids_left[ok], flux_left, pdf_writer) if len(flux_left) else _no_predictions()
        )
        yield _table(ids_left, why_left, pred, predictor)


def _reasons(chunk: SpectraChunk) -> np.ndarray:
    """(n,) object: None where the row is predicted, else its `reject_reason`: the reader's (XP
    continuous sources without a usable spectrum), or a total flux <= 0 (`xpz.spectra.nonpositive_total`,
    the served model's check too), for which the network's input is undefined."""
    why = (
        np.array(chunk.reasons, dtype=object)
        if chunk.reasons is not None
        else np.full(len(chunk), None, dtype=object)
    )
    usable = np.array([w is None for w in why], dtype=bool)
    empty = np.zeros(len(chunk), dtype=bool)
    empty[usable] = nonpositive_total(chunk.fluxes[usable])
    why[empty] = NO_TOTAL_FLUX_REASON
    return why


def _no_predictions() -> pd.DataFrame:
    return pd.DataFrame({c: np.empty(0) for c in (*PREDICTION_COLUMNS, "ood_score")}).assign(
        eligible=np.empty(0, bool)
    )


def _predict(predictor: Predictor, ids: np.ndarray, flux: np.ndarray, pdf_writer) -> pd.DataFrame:
    """Predictions of one batch-aligned block; with a `pdf_metrics.PdfWriter`, its p(z) written too."""
    if pdf_writer is None:
        return predictor.predict(flux)
    pred, edges, cdf = predictor.predict_with_pdf(flux)
    ancil = {"source_id": ids, **{c: pred[c].to_numpy() for c in pred.columns}}
    pdf_writer.write(edges, cdf, ancil)
    return pred


def _table(ids: np.ndarray, reasons: np.ndarray, pred: pd.DataFrame, predictor: Predictor) -> pa.Table:
    n = len(ids)
    ok = np.array([w is None for w in reasons], dtype=bool)
    columns = []
    for c in PREDICTION_COLUMNS:
        values = np.full(n, np.nan)
        values[ok] = pred[c].to_numpy(np.float64)
        columns.append(pa.array(values, pa.float64()))
    ood = np.full(n, np.nan)
    ood[ok] = pred["ood_score"].to_numpy(np.float64)
    eligible = np.zeros(n, dtype=bool)
    eligible[ok] = pred["eligible"].to_numpy(bool)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            *columns,
            pa.array(ood, pa.float64()),
            pa.array(eligible, pa.bool_()),
            pa.repeat(pa.scalar(predictor.name, pa.string()), n),
            pa.repeat(pa.scalar(predictor.version, pa.string()), n),
            pa.array(list(reasons), pa.string()),
        ],
        schema=OUTPUT_SCHEMA,
    )


# `--out`'s table format, by its name: CSV for `.csv` (what astropy.table and pandas read as text),
# Parquet otherwise; a name that says another format is refused rather than filled with Parquet bytes.
_TEXT_OUTPUTS = (".csv",)
_OTHER_FORMATS = (
    ".ecsv",
    ".fits",
    ".fit",
    ".fits.gz",
    ".vot",
    ".xml",
    ".txt",
    ".tsv",
    ".json",
    ".h5",
    ".hdf5",
)


def output_format(out: Path | str) -> str:
    """'csv' for an output named *.csv, 'parquet' for any other name, InputError for a name that
    says a format xpz does not write (ECSV, FITS, VOTable, text, JSON, HDF5)."""
    name = Path(out).name.lower()
    if name.endswith(_TEXT_OUTPUTS):
        return "csv"
    if name.endswith(_OTHER_FORMATS):
        raise InputError(
            f"--out {out}: xpz predict writes Parquet, or CSV for a name ending .csv; "
            "convert with astropy.table (Table.read(path).write(...)) for other formats"
        )
    return "parquet"


def _table_writer(path: Path, fmt: str):  # noqa: ANN202
    if fmt == "csv":
        import pyarrow.csv as pacsv

        return pacsv.CSVWriter(path, OUTPUT_SCHEMA)
    return pq.ParquetWriter(path, OUTPUT_SCHEMA)


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
    rejected: int = 0  # rows with z NaN and a reject_reason (no usable spectrum, or total flux <= 0)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # bundle members that are other products

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
    strict: bool = False,
    pdf: Path | str | None = None,
) -> PredictResult:
    """Predict every spectrum of `source` (a file, a DataLink zip, or a folder of files read in path
    order) into the Parquet file `out` (CSV if its name ends .csv), one row per input source. A source without a usable XP
    spectrum gets z NaN, `eligible` false and a `reject_reason`; with `strict` any such source is an
    `InputError`. Nothing is written at `out` unless every row succeeded. With `pdf`, the p(z) of
    each predicted spectrum also goes to that qp HDF5 file (`xpz.model.pdf_metrics`), in chunks, in
    the same order, with ancillary columns source_id, z, z_lower, z_upper, ood_score, eligible."""
    if fmt not in FORMATS:  # an option error comes before anything is read
        raise InputError(f"--format {fmt!r}: unknown format (expected one of {', '.join(FORMATS)})")
    output_format(out)
    for option, target in (("--out", out), ("--pdf", pdf)):  # before the work, not at the final rename
        if target is not None and Path(target).is_dir():
            raise InputError(f"{option} {target}: is a folder; give the path of a file (in it or elsewhere)")
    with tempfile.TemporaryDirectory(prefix="xpz-bundle-") as workdir:
        bundle = expand(source, Path(workdir))
        files = [kind.path for kind in bundle.files]
        result = _predict_files(
            files, source, out, model, fmt, chunk_size, progress, tracking_uri, strict, pdf
        )
    result.skipped = bundle.skipped
    return result


def _predict_files(
    files, source, out, model, fmt, chunk_size, progress, tracking_uri, strict, pdf
) -> PredictResult:  # noqa: ANN001
    from tqdm.auto import tqdm

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
    total = None if any(t is None for t in totals) else sum(t for t in totals if t is not None)
    pdf_writer = None
    if pdf is not None:
        from xpz.model.pdf_metrics import PdfWriter

        if predictor.keras_model is None:
            raise InputError(f"model {predictor.uri}: not an xpz Keras model, so it gives no p(z) (--pdf)")
        # qp's HDF5 layout needs the number of predicted rows up front: count them by streaming once
        usable = sum(_usable_rows(c) for f in files for c in iter_spectra(f, fmt, chunk_size))
        pdf_writer = PdfWriter(pdf, usable)
    rows = rejected = 0
    out = Path(out)
    with atomic_path(out) as tmp, contextlib.ExitStack() as stack:
        stack.callback(streams[0].close)
        if pdf_writer is not None:
            stack.callback(pdf_writer.abort)  # removes its temporary file unless closed
        writer = stack.enter_context(_table_writer(tmp, output_format(out)))
        bar = stack.enter_context(
            tqdm(
                total=total,
                unit=" spectra",
                unit_scale=True,
                disable=not progress,
                desc=f"predict {Path(source).name}",
            )
        )
        for i, path in enumerate(files):
            chunks = (
                itertools.chain([first], streams[0])
                if i == 0
                else _prefetch(iter_spectra(path, fmt, chunk_size))
            )
            for table in predict_chunks(chunks, predictor, pdf_writer):
                bad = table.num_rows - table.column("reject_reason").null_count
                if bad and strict:
                    raise InputError(f"{path}: {describe_rejects(table)} (--strict: nothing written)")
                writer.write_table(table)
                rows += table.num_rows
                rejected += bad
                bar.update(table.num_rows)
        writer.close()
        if pdf_writer is not None:
            pdf_writer.close()  # before the predictions are renamed into place
    return PredictResult(
        out,
        rows,
        predictor.name,
        predictor.version,
        predictor.uri,
        time.perf_counter() - start,
        len(files),
        load_seconds=start - loading,
        rejected=rejected,
    )


def _usable_rows(chunk: SpectraChunk) -> int:
    return int(sum(w is None for w in _reasons(chunk)))


def describe_rejects(table: pa.Table) -> str:
    """'2 source(s) without a usable XP spectrum: source_id 1 (no BP spectrum), ...' for a predictions table."""
    frame = table.select([ID_COLUMN, "reject_reason"]).to_pandas().dropna()
    shown = ", ".join(
        f"source_id {i} ({r})" for i, r in zip(frame[ID_COLUMN][:5], frame["reject_reason"][:5])
    )
    more = f" (+{len(frame) - 5} more)" if len(frame) > 5 else ""
    return f"{len(frame)} source(s) without a usable XP spectrum: {shown}{more}"
