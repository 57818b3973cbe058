"""Gaia DR3 XP continuous mean spectra in any container -> blocks of (source_id, 186 fluxes, reasons).

Containers (each optionally gzipped; see `xpz.data.formats.identify`):
- CSV (the archive's `"(a, b, ...)"` cells) and ECSV (JSON `[a, b, ...]` cells, the bulk download's
  `XpContinuousMeanSpectrum_*.csv.gz`): streamed with pyarrow's CSV reader in blocks (bounded memory);
  the ECSV's YAML header (delimiter) is parsed by astropy, `null` and empty cells are missing values;
- Parquet: pyarrow row batches; array columns as lists or as the same text cells;
- FITS (variable-length array columns) and VOTable (TABLEDATA, BINARY, BINARY2): astropy.table, whole
  table (the archive's query and DataLink products, at most a few thousand sources a file).

Column names match in any case (`SOURCE_ID`); other columns and their order do not matter.

Quality rules (one place; `xpz predict` and `xpz data import` apply the same): a source is rejected,
with a reason, when a band has no coefficients, when a band does not hold exactly 55 coefficients,
or when a coefficient is not finite (NaN, inf, `null`). Every other source is converted with
`xpz.data.xp.coefficients_to_fluxes`. `bp_n_relevant_bases` / `rp_n_relevant_bases` are not a
rejection rule: they are a truncation hint (gaiaxpy's `truncation=True`), most DR3 sources have
fewer than 55 relevant bases, and xpz, like gaiaxpy's default, uses all 55 coefficients.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xpz.data.formats import COEFF_COLUMNS, NEEDED, FileKind, open_binary
from xpz.errors import InputError, describe_rows
from xpz.spectra import FLUX_DTYPE, ID_COLUMN, N_COEFFS, N_FLUX

TEXT_BLOCK_BYTES = 8 << 20  # pyarrow CSV block: bounds the raw text held at once


@dataclass
class XpBlock:
    """`source_id` (n,) int64; `fluxes` (n, 186) float32, NaN rows where rejected; `reasons` (n,)
    object: None for a usable source, else why it is not predicted; `first_row` in its file."""

    source_id: np.ndarray
    fluxes: np.ndarray
    reasons: np.ndarray
    first_row: int


# ----------------------------------------------------------------------------- array cells


def _band(name: str) -> str:
    return name.split("_")[0].upper()


def _finish(
    values: np.ndarray, lengths: np.ndarray, missing: np.ndarray, band: str
) -> tuple[np.ndarray, list[str | None]]:
    reasons: list[str | None] = [None] * len(lengths)
    for i in np.flatnonzero(missing | (lengths != N_COEFFS) | ~np.isfinite(values).all(axis=1)):
        if missing[i] or lengths[i] == 0:
            reasons[i] = f"no {band} spectrum"
        elif lengths[i] != N_COEFFS:
            reasons[i] = f"{band} has {lengths[i]} coefficients ({N_COEFFS} needed)"
        else:
            reasons[i] = f"{band} has non-finite coefficients"
    return values, reasons


def arrow_coefficients(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, list[str | None]]:
    """A string ('[a, b]', '(a, b)', JSON with `null`) or list column -> (n, 55) float64 + reasons."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    band = _band(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.utf8_trim(column.cast(pa.string()), "[]() \"")
        missing = np.asarray(
            pc.fill_null(pc.or_(pc.equal(text, ""), pc.equal(pc.utf8_lower(text), "null")), True)
        )
        text = pc.if_else(pa.array(missing), "", text)
        lists = pc.split_pattern(text, ",")
        items = pc.utf8_trim_whitespace(lists.flatten())
        items = pc.if_else(pc.equal(pc.utf8_lower(items), "null"), "nan", items)
        try:
            flat = items.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            return _python_coefficients(column.to_pylist(), name)
        offsets = lists.offsets.to_numpy()
        lengths = np.diff(offsets)
        lengths[missing] = 0
    elif (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        if pa.types.is_fixed_size_list(column.type):
            column = column.cast(pa.list_(column.type.value_type))
        missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
        offsets = column.offsets.to_numpy()
        flat = pc.fill_null(column.values.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        lengths = np.diff(offsets)
        lengths[missing] = 0
    else:
        raise InputError(f"column {name!r} holds {column.type}, not arrays of {N_COEFFS} coefficients")
    values = np.full((n, N_COEFFS), np.nan)
    full = lengths == N_COEFFS
    if full.any():
        values[full] = flat[offsets[:-1][full, None] + np.arange(N_COEFFS)]
    return _finish(values, lengths, missing, band)


def _python_coefficients(cells: Sequence[object], name: str) -> tuple[np.ndarray, list[str | None]]:
    """Cells of any kind (astropy masked arrays, numpy arrays, lists, text) -> (n, 55) + reasons."""
    n = len(cells)
    values = np.full((n, N_COEFFS), np.nan)
    lengths = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    for i, cell in enumerate(cells):
        if cell is None or cell is np.ma.masked:
            missing[i] = True
            continue
        if isinstance(cell, bytes):
            cell = cell.decode()
        if isinstance(cell, str):
            parts = [p.strip() for p in cell.strip("[]() \"").split(",") if p.strip()]
            try:
                arr = np.array([np.nan if p.lower() == "null" else float(p) for p in parts], dtype=float)
            except ValueError:
                arr = np.full(len(parts), np.nan)  # text that is no number: reported as non-finite
        else:
            arr = np.ma.filled(np.ma.asarray(cell, dtype=float), np.nan).ravel()
        lengths[i] = arr.size
        if arr.size == N_COEFFS:
            values[i] = arr
    return _finish(values, lengths, missing, _band(name))


# ------------------------------------------------------------------------------ conversion


def to_block(
    kind: FileKind, ids: pa.Array | np.ndarray | Sequence, bp: object, rp: object, first_row: int
) -> XpBlock:
    """One block of rows -> fluxes for the usable sources, NaN and a reason for the others."""
    from xpz.data.xp import coefficients_to_fluxes

    ids_arr = pa.array(ids) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    try:
        id_values = pc.cast(ids_arr, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        id_values = None
    if id_values is None or id_values.null_count:
        bad = (
            np.arange(len(ids_arr))
            if id_values is None
            else np.flatnonzero(id_values.is_null().to_numpy(zero_copy_only=False))
        )
        raise InputError(
            f"{kind.path}: column 'source_id' is empty or not an integer in rows {describe_rows((bad + first_row).tolist())}"
        )
    source_id = np.asarray(id_values.to_numpy(zero_copy_only=False), dtype=np.int64)
    coeffs, reasons = [], []
    for cells, name in ((bp, COEFF_COLUMNS[0]), (rp, COEFF_COLUMNS[1])):
        try:
            if isinstance(cells, (pa.Array, pa.ChunkedArray)):
                c, r = arrow_coefficients(cells, name)
            else:
                c, r = _python_coefficients(list(cells), name)  # type: ignore[call-overload]
        except InputError as err:
            raise InputError(f"{kind.path}: {err}; {NEEDED}") from None
        coeffs.append(c)
        reasons.append(r)
    why = np.array(
        [a if a and b is None else (b if a is None else f"{a}; {b}") for a, b in zip(*reasons)], dtype=object
    )
    ok = np.array([w is None for w in why], dtype=bool)
    fluxes = np.full((len(source_id), N_FLUX), np.nan, dtype=FLUX_DTYPE)
    if ok.any():
        fluxes[ok] = coefficients_to_fluxes(coeffs[0][ok], coeffs[1][ok])
    return XpBlock(source_id, fluxes, why, first_row)


# --------------------------------------------------------------------------------- readers


def _open_text(
    kind: FileKind, names: list[str], serial: bool = False, on_bad_row: Callable[[Any], str] | None = None
) -> tuple[pa.NativeFile, Any]:
    import pyarrow.csv as pacsv

    # gzip is decompressed by Arrow's C++ stream: no GIL held while the model thread works
    stream = pa.input_stream(str(kind.path), compression="gzip" if kind.gzip else None, buffer_size=1 << 20)
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(
            skip_rows=kind.header_lines, block_size=TEXT_BLOCK_BYTES, use_threads=not serial
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=kind.delimiter, newlines_in_values=False, invalid_row_handler=on_bad_row
        ),
        convert_options=pacsv.ConvertOptions(
            include_columns=names,
            column_types=dict.fromkeys(names, pa.string()),
            null_values=["", "null", "NULL"],
            strings_can_be_null=True,
        ),
    )
    return stream, reader


def _text_batches(kind: FileKind) -> Iterator[pa.RecordBatch]:
    names = [kind.column(ID_COLUMN), kind.column(COEFF_COLUMNS[0]), kind.column(COEFF_COLUMNS[1])]
    try:
        stream, reader = _open_text(kind, names)  # reads the first block
        with stream:
            for batch in reader:
                yield batch.select(names)
    except (pa.ArrowInvalid, EOFError, OSError, zlib.error) as err:
        raise InputError(_text_error(kind, err)) from None


# A text file's rows: 0-based data rows (header excluded), as in every message of this module and in
# the rejects' `row`; the line number (1-based, the file's own, decompressed for gzip) points at it.
_ROW = "0-based, header excluded"


def _text_error(kind: FileKind, err: BaseException) -> str:
    """The message for a CSV/ECSV that Arrow cannot read, naming the row: a row with the wrong number
    of fields (the file ends mid-row, or a damaged row) is found again by a serial parse, which numbers
    rows; a cut or corrupt gzip stream by counting the lines it decompresses to (the error path only)."""
    what = str(err).splitlines()[0] if str(err) else type(err).__name__
    first_data_line = kind.header_lines + 2  # the comment/ECSV lines, then the column names
    bad = _first_short_row(kind) if isinstance(err, pa.ArrowInvalid) and "CSV parse error" in what else None
    if bad is not None:
        line, expected, found, at_end = bad
        where = f"row {line - first_data_line} ({_ROW}; line {line} of the file)"
        counts = f"has {found} fields, {expected} expected"
        if at_end:
            return f"{kind.path}: the file ends mid-row (truncated?): {where} {counts}"
        return f"{kind.path}: a damaged row (corrupt file?): {where} {counts}"
    cut = _gzip_cut(kind) if kind.gzip else None
    if cut is not None:
        lines, mid_line, corrupt = cut
        if mid_line:
            place = (
                f"in row {lines + 1 - first_data_line} ({_ROW}; line {lines + 1} of the decompressed text)"
            )
        else:
            place = f"after row {lines - first_data_line} ({_ROW}; line {lines} of the decompressed text)"
        damage = "corrupt" if corrupt else "cut short (truncated?)"
        return f"{kind.path}: the gzip data are {damage}: the text ends {place} ({what})"
    return f"{kind.path}: not a readable {kind.container.upper()} file (truncated or corrupt?): {what}"


def _first_short_row(kind: FileKind) -> tuple[int, int, int, bool] | None:
    """(line, expected fields, found fields, whether it is the file's last row) of the first row
    Arrow cannot split into the header's columns; a serial parse numbers the rows."""
    found: list[tuple[int, int, int]] = []

    def on_bad_row(row: Any) -> str:
        if row.number is not None:
            found.append((row.number, row.expected_columns, row.actual_columns))
        return "error"

    try:
        stream, reader = _open_text(kind, [kind.column(ID_COLUMN)], serial=True, on_bad_row=on_bad_row)
        with stream:
            for _ in reader:
                pass
    except (pa.ArrowException, EOFError, OSError, zlib.error):
        pass
    if not found:
        return None
    line, expected, actual = found[0]
    return line, expected, actual, not _text_after_line(kind, line)


def _text_after_line(kind: FileKind, line: int) -> bool:
    """Whether the (decompressed) text has a non-blank line after line `line` (1-based)."""
    with open_binary(kind.path) as fh:
        for number, text in enumerate(fh, start=1):
            if number > line and text.strip():
                return True
    return False


def _gzip_cut(kind: FileKind) -> tuple[int, bool, bool] | None:
    """(complete lines, whether the text stops mid-line, whether the data are corrupt rather than cut
    short) of a gzip file that does not decompress to its end; None if it does."""
    lines, last = 0, b"\n"
    inflate = zlib.decompressobj(wbits=31)
    data = b""
    with open(kind.path, "rb") as fh:
        while True:
            if not data:
                data = fh.read(1 << 20)
                if not data:
                    break
            if inflate.eof:  # the next member of a concatenated gzip
                inflate = zlib.decompressobj(wbits=31)
            try:
                out = inflate.decompress(data)
            except zlib.error:
                return lines, last != b"\n", True
            data = inflate.unused_data if inflate.eof else b""
            if out:
                lines += out.count(b"\n")
                last = out[-1:]
    return None if inflate.eof else (lines, last != b"\n", False)


def _rechunk(batches: Iterator[pa.RecordBatch], chunk_size: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= chunk_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_size)
            rest = table.slice(chunk_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def _ids_as_int(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_string(column.type):
        column = pc.utf8_trim_whitespace(column)
    return column


def iter_xp(kind: FileKind, chunk_size: int) -> Iterator[XpBlock]:
    """Blocks of at most `chunk_size` rows of an XP continuous file (any container)."""
    if kind.container in ("csv", "ecsv"):
        yield from _iter_tables(kind, _rechunk(_text_batches(kind), chunk_size))
    elif kind.container == "parquet":
        yield from _iter_parquet(kind, chunk_size)
    else:
        yield from _iter_astropy(kind, chunk_size)


def _iter_tables(kind: FileKind, tables: Iterator[pa.Table]) -> Iterator[XpBlock]:
    row = 0
    try:
        for table in tables:
            ids, bp, rp = (table.column(i) for i in range(3))
            yield to_block(kind, _ids_as_int(ids), bp, rp, row)
            row += table.num_rows
    except (pa.ArrowInvalid, EOFError, OSError, zlib.error) as err:  # text errors are InputErrors already
        raise InputError(f"{kind.path}: not a readable {kind.container.upper()} file (truncated or corrupt?) "
                         f"in the rows from row {row} on (0-based): {str(err).splitlines()[0]}") from None  # fmt: skip
    if row == 0:
        raise InputError(f"{kind.path}: the file holds no rows")


def _iter_parquet(kind: FileKind, chunk_size: int) -> Iterator[XpBlock]:
    import pyarrow.parquet as pq

    names = [kind.column(ID_COLUMN), kind.column(COEFF_COLUMNS[0]), kind.column(COEFF_COLUMNS[1])]
    pf = pq.ParquetFile(kind.path)
    batches = (
        pa.Table.from_batches([b])
        for b in pf.iter_batches(batch_size=chunk_size, columns=names, use_threads=False)
    )
    yield from _iter_tables(kind, batches)


def _iter_astropy(kind: FileKind, chunk_size: int) -> Iterator[XpBlock]:
    """FITS and VOTable through astropy.table (read whole: archive query / DataLink products)."""
    from astropy.table import Table

    names = [kind.column(ID_COLUMN), kind.column(COEFF_COLUMNS[0]), kind.column(COEFF_COLUMNS[1])]
    fmt = "fits" if kind.container == "fits" else "votable"
    try:
        with open_binary(kind.path) as fh:
            import io

            table = Table.read(io.BytesIO(fh.read()), format=fmt)
        cols = [table[n] for n in names]
        ids = np.ma.asarray(cols[0])
        if np.ma.getmaskarray(ids).any():
            rows = np.flatnonzero(np.ma.getmaskarray(ids)).tolist()
            raise InputError(f"{kind.path}: column 'source_id' is empty in rows {describe_rows(rows)}")
        ids = np.asarray(ids.filled(0), dtype=np.int64)  # type: ignore[assignment]  # native byte order (FITS is big-endian)
        bp, rp = list(cols[1]), list(cols[2])
    except InputError:
        raise
    except Exception as err:  # astropy raises many kinds for truncated or corrupt files
        raise InputError(
            f"{kind.path}: not a readable {fmt.upper()} table (truncated or corrupt?): {err}"
        ) from None
    if len(table) == 0:
        raise InputError(f"{kind.path}: the file holds no rows")
    for start in range(0, len(table), chunk_size):
        stop = start + chunk_size
        yield to_block(kind, ids[start:stop], bp[start:stop], rp[start:stop], start)
