"""Chunked readers of prediction inputs: memory stays bounded whatever the file size.

The same formats as `xpz.data.io` (our Parquet, the seed's CSV, Gaia XP continuous in any container),
parsed by the same code: each chunk goes through `xpz.data.io.conform`, `xpz.data.io.parse_seed_frame` or
`xpz.data.xpcont.iter_xp` (-> `xpz.data.xp.coefficients_to_fluxes`), exactly what `xpz data import` runs.
The format comes from the file's bytes (`xpz.data.formats.input_format`). Prediction inputs need no redshift: a `z` column (our Parquet, the seed's CSV
layout) is accepted and ignored.

Each chunk is a `SpectraChunk` (source ids, (n, 186) float32 fluxes, the file's row number of its
first row, and for XP continuous input the per-row `reasons`: None, or why a source is not predicted).
Errors are `InputError`s naming the file and the rows (0-based data rows, header excluded) or source
ids; non-finite fluxes of a usable row are rejected here (the model cannot use them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xpz.data.formats import NEEDED, FileKind, check_file, identify, input_format  # noqa: F401  (check_file re-exported)
from xpz.data.io import check_row_lengths, conform, names_flux_columns, parse_seed_frame, seed_csv_header
from xpz.data.xpcont import iter_xp
from xpz.errors import InputError, describe_rows
from xpz.spectra import FLUX_COLUMNS, FLUX_DTYPE, ID_COLUMN, N_FLUX, TARGET_COLUMN

FORMATS = ("auto", "parquet", "csv", "gaia")
DEFAULT_CHUNK_SIZE = 16384
INPUT_SUFFIXES = (".parquet", ".csv", ".ecsv", ".gz", ".fits", ".fit", ".xml", ".vot", ".zip")


@dataclass
class SpectraChunk:
    source_id: np.ndarray  # (n,) int64
    fluxes: np.ndarray  # (n, 186) float32, all finite
    first_row: int  # row number (0-based, header excluded) of the chunk's first row in its file
    reasons: np.ndarray | None = None  # (n,) object: None where usable, else why the row is not predicted

    def __len__(self) -> int:
        return len(self.source_id)


def _check_finite(chunk: SpectraChunk, source: str) -> SpectraChunk:
    finite = np.isfinite(chunk.fluxes)
    if chunk.reasons is not None:
        finite[chunk.reasons != None] = True  # noqa: E711  (rejected rows carry NaN by design)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        bad_cols = np.flatnonzero(~finite.all(axis=0))
        rows = (bad_rows + chunk.first_row).tolist()
        ids = chunk.source_id[bad_rows].tolist()
        raise InputError(
            f"{source}: non-finite flux (NaN or inf) in rows {describe_rows(rows)} "
            f"(source_id {describe_rows(ids)}), column(s) {describe_rows([FLUX_COLUMNS[c] for c in bad_cols], 3)}"
        )
    return chunk


def _from_frame(frame: pd.DataFrame, first_row: int, source: str) -> SpectraChunk:
    """A frame already in the schema (source_id + 186 flux columns) -> a checked chunk."""
    ids = frame[ID_COLUMN].to_numpy(dtype=np.int64)
    fluxes = np.ascontiguousarray(frame.loc[:, list(FLUX_COLUMNS)].to_numpy(dtype=FLUX_DTYPE))
    return _check_finite(SpectraChunk(ids, fluxes, first_row), source)


# ------------------------------------------------------------------------------------ Parquet


def parquet_rows(path: Path | str) -> int | None:
    """Row count from the Parquet footer (None if unreadable)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # the reader reports the real error
        return None


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def iter_parquet(path: Path, chunk_size: int) -> Iterator[SpectraChunk]:
    source = str(path)
    try:
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable Parquet file (truncated or corrupt?): {err}") from None
    wanted = [ID_COLUMN, *FLUX_COLUMNS]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        n_flux = sum(1 for c in schema.names if c.startswith("flux_"))
        hint = f" (found {n_flux} flux columns, expected {N_FLUX})" if n_flux != N_FLUX else ""
        raise InputError(f"{path}: missing column(s) {describe_rows(missing, 8)}{hint}")
    if pf.metadata.num_rows == 0:
        raise InputError(f"{path}: the file holds no rows")
    fast = all(_numeric(schema.field(c).type) for c in wanted)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=chunk_size, columns=wanted, use_threads=False):
            n = batch.num_rows
            if fast:
                id_col = batch.column(0)
                if id_col.null_count:
                    nulls = np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False)) + row
                    raise InputError(
                        f"{path}: column {ID_COLUMN!r} is empty in rows {describe_rows(nulls.tolist())}"
                    )
                ids = id_col.to_numpy().astype(np.int64, copy=False)
                fluxes = np.empty((n, N_FLUX), dtype=FLUX_DTYPE)
                for j in range(N_FLUX):
                    col = batch.column(j + 1)
                    fluxes[:, j] = (
                        col.to_numpy(zero_copy_only=False)
                        if col.null_count == 0
                        else (col.cast(pa.float64()).fill_null(np.nan).to_numpy())
                    )
                yield _check_finite(SpectraChunk(ids, fluxes, row), source)
            else:  # string or other columns: conform names the offending rows
                frame = batch.to_pandas()
                frame.index = pd.RangeIndex(row, row + n)
                yield _from_frame(
                    conform(frame, source, with_target=False).set_axis(frame.index), row, source
                )
            row += n
    except (pa.ArrowException, OSError) as err:
        raise InputError(
            f"{path}: not a readable Parquet file (truncated or corrupt?) in the rows from row {row} on (0-based): {err}"
        ) from None


# -------------------------------------------------------------------------------- seed CSV


def iter_seed_csv(path: Path, chunk_size: int) -> Iterator[SpectraChunk]:
    """The seed's CSV: 186 fluxes, or `z` then 186 fluxes (the seed's layout; z is ignored);
    optional header row, optional `source_id` column (else the row number is the source_id). A
    header in our column names is matched by name (`xpz.data.io.parse_seed_frame`)."""
    source = str(path)
    header = seed_csv_header(path)
    try:
        reader = pd.read_csv(path, header=header, dtype=str, keep_default_na=False, chunksize=chunk_size)
        empty = True
        for raw in reader:
            if raw.empty:
                continue
            empty = False
            first_row = int(raw.index[0])
            n_values = raw.shape[1] - (1 if header is not None and ID_COLUMN in raw.columns else 0)
            if header is not None and names_flux_columns(raw.columns):  # matched by name (parse_seed_frame)
                with_target = TARGET_COLUMN in raw.columns
            elif n_values not in (N_FLUX, N_FLUX + 1):
                raise InputError(
                    f"{path}: expected {N_FLUX} flux columns (or z and {N_FLUX} fluxes, the seed's layout), "
                    f"found {n_values} value columns"
                )
            else:
                with_target = n_values == N_FLUX + 1
            check_row_lengths(raw, path, has_header=header is not None)
            frame = parse_seed_frame(raw, source, with_target=with_target, has_header=header is not None)
            frame.index = raw.index
            if with_target:
                frame = frame.drop(columns=[TARGET_COLUMN])
            yield _from_frame(frame, first_row, source)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV: {err}") from None
    if empty:
        raise InputError(f"{path}: the file holds no rows")


# ------------------------------------------------------------------------ Gaia XP continuous


def iter_gaia(kind: FileKind, chunk_size: int) -> Iterator[SpectraChunk]:
    """XP continuous mean spectra in any container (`xpz.data.xpcont`); rejected sources keep their
    row, with NaN fluxes and a reason."""
    for block in iter_xp(kind, chunk_size):
        yield _check_finite(
            SpectraChunk(block.source_id, block.fluxes, block.first_row, block.reasons), str(kind.path)
        )


# ------------------------------------------------------------------------------------ entry


def resolve_format(path: Path | str, fmt: str = "auto") -> str:
    """'parquet' (our flux schema), 'csv' (the seed's CSV) or 'gaia' (XP continuous), from the bytes."""
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    return input_format(path)


def iter_spectra(
    path: Path | str, fmt: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[SpectraChunk]:
    """Chunks of (source_id, fluxes) from one input file; at most `chunk_size` rows each."""
    path = Path(path)
    if chunk_size < 1:
        raise InputError(f"chunk size must be >= 1, got {chunk_size}")
    check_file(path)
    fmt = resolve_format(path, fmt)
    if fmt == "gaia":
        kind = identify(path)
        if kind.product != "xp_continuous":
            raise InputError(
                f"{path}: --format gaia, but the file holds no bp_coefficients/rp_coefficients; {NEEDED}"
            )
        return iter_gaia(kind, chunk_size)
    readers = {"parquet": iter_parquet, "csv": iter_seed_csv}
    return readers[fmt](path, chunk_size)


def count_rows(path: Path | str, fmt: str = "auto") -> int | None:
    """Rows in the file when cheap to know (Parquet footer), else None."""
    try:
        return parquet_rows(path) if resolve_format(path, fmt) == "parquet" else None
    except InputError:
        return None


def list_partitions(catalogue: Path | str) -> list[Path]:
    """The input files of a partitioned catalogue: a file, or a folder's supported files (recursively,
    sorted by path, hidden files skipped)."""
    catalogue = Path(catalogue)
    if catalogue.is_file():
        return [catalogue]
    if not catalogue.exists():
        raise InputError(f"{catalogue}: file or folder not found")
    parts = sorted(
        p for p in catalogue.rglob("*")
        if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
        and not any(s.startswith((".", "_")) for s in p.relative_to(catalogue).parts)
    )  # fmt: skip
    if not parts:
        raise InputError(f"{catalogue}: no input files ({', '.join(INPUT_SUFFIXES)}) in the folder")
    return parts
