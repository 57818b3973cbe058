"""Reading and writing spectra datasets in the formats users bring.

- our Parquet schema: `source_id`, `z`, `flux_000..flux_185` (float32);
- the seed's CSV: column 0 `z`, then 186 fluxes (a header row is optional);
- Gaia XP continuous mean spectra in any container (`xpz.data.xpcont`: CSV, ECSV, FITS, VOTable,
  Parquet, gzipped or not), converted to the 186-sample grid by `xpz.data.xp.coefficients_to_fluxes`,
  joined with a redshift table on source_id.

Every reader raises `InputError` naming the file, the column and the rows; every writer goes through
`atomic_path`, so a failure leaves no partial file behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xpz.errors import InputError, describe_rows
from xpz.files import atomic_path
from xpz.spectra import (
    DATASET_COLUMNS,
    FAMILY_COLUMN,
    FLUX_COLUMNS,
    FLUX_DTYPE,
    ID_COLUMN,
    N_FLUX,
    TARGET_COLUMN,
)

REDSHIFT_ALIASES = ("z", "redshift", "z_sdss", "zspec")


def schema(with_target: bool = True, with_family: bool = False) -> pa.Schema:
    """The Arrow schema of a dataset (or of prediction inputs, without `z`); `family` (the galaxy
    physics of a synthetic row, `xpz.spectra.FAMILY_COLUMN`) follows `z` when present."""
    fields = [pa.field(ID_COLUMN, pa.int64())]
    if with_target:
        fields.append(pa.field(TARGET_COLUMN, pa.float64()))
    if with_target and with_family:
        fields.append(pa.field(FAMILY_COLUMN, pa.string()))
    fields += [pa.field(c, pa.float32()) for c in FLUX_COLUMNS]
    return pa.schema(fields)


def conform(df: pd.DataFrame, source: str, with_target: bool = True) -> pd.DataFrame:
    """Check columns and coerce dtypes to the dataset schema; name what is wrong. A `family` column
    (labelled data only) is kept, as strings, after `z`."""
    wanted = list(DATASET_COLUMNS) if with_target else [ID_COLUMN, *FLUX_COLUMNS]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {describe_rows(missing, 8)}")
    family = None
    if with_target and FAMILY_COLUMN in df.columns:
        family = df[FAMILY_COLUMN]
        empty = family.isna().to_numpy() | (family.astype(str).str.strip() == "").to_numpy()
        if empty.any():
            rows = df.index[empty].tolist()
            raise InputError(f"{source}: column {FAMILY_COLUMN!r} is empty in rows {describe_rows(rows)}")
    out = df.loc[:, wanted].copy()
    for column in wanted:
        values = pd.to_numeric(out[column], errors="coerce")
        bad = values.isna() & out[column].notna()
        if bad.any():
            rows = out.index[bad].tolist()
            raise InputError(
                f"{source}: column {column!r} has non-numeric values in rows {describe_rows(rows)}"
                f" (e.g. {out.loc[rows[0], column]!r})"
            )
        out[column] = values
    if out[ID_COLUMN].isna().any():
        rows = out.index[out[ID_COLUMN].isna()].tolist()
        raise InputError(f"{source}: column {ID_COLUMN!r} is empty in rows {describe_rows(rows)}")
    fractional = (out[ID_COLUMN] % 1 != 0).to_numpy()
    if fractional.any():  # int64 would truncate 0.5 to 0: another source's id
        rows = out.index[fractional].tolist()
        raise InputError(
            f"{source}: column {ID_COLUMN!r} has non-integer values in rows {describe_rows(rows)}"
            f" (e.g. {out.loc[rows[0], ID_COLUMN]!r})"
        )
    out[ID_COLUMN] = out[ID_COLUMN].astype(np.int64)
    if with_target:
        out[TARGET_COLUMN] = out[TARGET_COLUMN].astype(np.float64)
    out[list(FLUX_COLUMNS)] = out[list(FLUX_COLUMNS)].astype(FLUX_DTYPE)
    if family is not None:
        labels = pd.Series(family.astype(str).to_numpy(), index=out.index, name=FAMILY_COLUMN)
        out = pd.concat([out.iloc[:, :2], labels, out.iloc[:, 2:]], axis=1)
    return out.reset_index(drop=True)


def write_dataset(df: pd.DataFrame, path: Path | str, with_target: bool = True) -> Path:
    """Write a frame in the dataset schema as Parquet, atomically."""
    path = Path(path)
    frame = conform(df, str(path), with_target)
    table = pa.Table.from_pandas(
        frame, schema=schema(with_target, FAMILY_COLUMN in frame.columns), preserve_index=False
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_dataset_chunks(chunks: Iterator[pd.DataFrame], path: Path | str) -> int:
    """Stream frames into one Parquet file (bounded memory), atomically. Returns the row count."""
    path = Path(path)
    rows = 0
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        raise InputError(f"{path}: no rows to write")
    target = schema(with_family=FAMILY_COLUMN in first.columns)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, target) as writer:
            for chunk in itertools.chain([first], chunks):
                table = pa.Table.from_pandas(conform(chunk, str(path)), schema=target, preserve_index=False)
                writer.write_table(table)
                rows += len(chunk)
    return rows


def read_dataset(path: Path | str, with_target: bool = True) -> pd.DataFrame:
    """Read a dataset Parquet file, checking its schema."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable Parquet file (truncated or corrupt?): {err}") from None
    if df.empty:
        raise InputError(f"{path}: the file holds no rows")
    return conform(df, str(path), with_target)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def seed_csv_header(path: Path | str) -> int | None:
    """0 when the seed CSV's first line is a header row (not all numbers), else None.

    Raises InputError when the file is not text (a Parquet or FITS file read as CSV)."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            first = fh.readline().strip().split(",")
    except UnicodeDecodeError:
        raise InputError(
            f"{path}: not a text CSV (binary bytes in its first line); is --format csv right for this file?"
        ) from None
    return 0 if first and not all(_is_number(v) for v in first if v.strip()) else None


def names_flux_columns(columns: Iterable[object]) -> bool:
    """Whether a CSV header uses our flux column names: its columns are then matched by name."""
    return any(c in FLUX_COLUMNS for c in columns)


def _rows_as_read(
    path: Path, rows: set[int], has_header: bool
) -> tuple[dict[int, tuple[int, int]], int | None]:
    """The field count and line number (1-based) of the given 0-based data rows of a CSV, as written
    (blank lines skipped, as pandas does), and the number of the file's last data row if the scan
    reached it (None if it stopped after the last wanted row and more followed)."""
    import csv

    found: dict[int, tuple[int, int]] = {}
    row, wanted_last = (-2 if has_header else -1), max(rows)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        for fields in reader:
            if not fields:
                continue
            row += 1
            if row > wanted_last:
                return found, None
            if row in rows:
                found[row] = (len(fields), reader.line_num)
    return found, row


def check_row_lengths(raw: pd.DataFrame, path: Path | str, has_header: bool) -> None:
    """InputError for rows with fewer fields than the file's rows (the header's, or the first row's):
    a row cut short, typically a file that ends mid-row. pandas pads such a row with "" (read as
    strings), which would otherwise be reported as a NaN flux. Candidates are rows whose last field
    and a field xpz reads are empty (an error either way), and only those are looked up in the file's
    text. `raw`'s index is the 0-based data row."""
    last_empty = (raw.iloc[:, -1] == "").to_numpy()
    if not last_empty.any():
        return
    used = [c for c in raw.columns if c in (ID_COLUMN, TARGET_COLUMN, *FLUX_COLUMNS)]
    used = used if has_header and names_flux_columns(raw.columns) else list(raw.columns)
    candidates = raw.index[last_empty & (raw[used] == "").to_numpy().any(axis=1)]
    if not len(candidates):
        return
    expected = raw.shape[1]
    counts, last = _rows_as_read(Path(path), {int(r) for r in candidates}, has_header)
    short = [r for r in sorted(counts) if counts[r][0] < expected]
    if not short:
        return  # empty values, not missing fields: `conform` and the finite checks name them
    fields, line = counts[short[0]]
    where = f"(0-based, header excluded; line {line} of the file) has {fields} fields, {expected} expected"
    if short == [last]:
        raise InputError(f"{path}: the file ends mid-row (truncated?): row {short[0]} {where}")
    if len(short) == 1:
        raise InputError(f"{path}: too few fields: row {short[0]} {where}")
    raise InputError(f"{path}: too few fields in rows {describe_rows(short)}; row {short[0]} {where}")


def parse_seed_frame(
    raw: pd.DataFrame, source: str, with_target: bool = True, has_header: bool = False
) -> pd.DataFrame:
    """Rows of the seed's CSV read as strings (`z` then 186 fluxes, optional `source_id` column)
    -> the dataset schema. Without a `source_id` column the row number (the frame's index) is used.
    A header that names our columns (`flux_000`..`flux_185`, `z`) is matched by name, and a missing
    one is an InputError; any other header is the seed's layout, read by position.
    Shared by `read_seed_csv` and the chunked readers of `xpz.data.stream`."""
    raw = raw.copy()
    ids = None
    if has_header and ID_COLUMN in raw.columns:
        ids = raw.pop(ID_COLUMN)
    # a header in our names (flux_000..flux_185, z) is left for `conform` to match by name, never by
    # position, so a reordered or incomplete header cannot put one column's values in another's place
    if not (has_header and names_flux_columns(raw.columns)):  # the seed's layout: by position
        expected = N_FLUX + (1 if with_target else 0)
        if raw.shape[1] != expected:
            what = "z and 186 fluxes" if with_target else "186 fluxes"
            raise InputError(f"{source}: expected {expected} columns ({what}), found {raw.shape[1]}")
        raw.columns = ([TARGET_COLUMN] if with_target else []) + list(FLUX_COLUMNS)
    raw = raw.replace("", np.nan)
    raw.insert(0, ID_COLUMN, ids if ids is not None else raw.index.to_numpy(dtype=np.int64))
    return conform(raw, source, with_target)


def read_seed_csv(path: Path | str, with_target: bool = True) -> pd.DataFrame:
    """Read the seed's CSV: `z` then 186 fluxes (or 186 fluxes alone when `with_target` is False).

    A header row is optional. A `source_id` column is used when present; otherwise the galaxy's row
    number (0-based, header excluded) becomes its source_id, so error messages can name rows.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    header = seed_csv_header(path)
    try:
        raw = pd.read_csv(path, header=header, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: not a readable CSV: {err}") from None
    if raw.empty:
        raise InputError(f"{path}: the file holds no rows")
    check_row_lengths(raw, path, has_header=header is not None)
    return parse_seed_frame(raw, str(path), with_target, has_header=header is not None)


def read_xp_continuous(path: Path | str, chunk_size: int = 16384) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gaia XP continuous mean spectra in any container (`xpz.data.xpcont`) -> (spectra, rejects).

    `spectra`: source_id + the 186 fluxes of every usable source, in file order; `rejects`: `row`
    (0-based data row), `source_id`, `reject_reason` of the sources that cannot be used (no band,
    not 55 coefficients, non-finite coefficients). Read in blocks; the result is held whole."""
    from xpz.data.formats import NEEDED, identify
    from xpz.data.xpcont import iter_xp

    kind = identify(path)
    if kind.product != "xp_continuous":
        raise InputError(f"{path}: holds no bp_coefficients/rp_coefficients; {NEEDED}")
    good, bad = [], []
    for block in iter_xp(kind, chunk_size):
        ok = np.array([r is None for r in block.reasons], dtype=bool)
        frame = pd.DataFrame(block.fluxes[ok], columns=list(FLUX_COLUMNS))
        frame.insert(0, ID_COLUMN, block.source_id[ok])
        good.append(frame)
        rows = np.flatnonzero(~ok)
        bad.append(pd.DataFrame({"row": rows + block.first_row, ID_COLUMN: block.source_id[rows],
                                 "reject_reason": block.reasons[rows].astype(str)}))  # fmt: skip
    return pd.concat(good, ignore_index=True), pd.concat(bad, ignore_index=True)


def read_gaia_xp_continuous(path: Path | str) -> pd.DataFrame:
    """The usable sources of an XP continuous file (any container) -> source_id + 186 fluxes."""
    return read_xp_continuous(path)[0]


def read_redshift_table(path: Path | str) -> pd.DataFrame:
    """A table of `source_id` and redshift (`z`, `redshift`, `z_sdss` or `zspec`), CSV or Parquet."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, comment="#")
    except Exception as err:
        raise InputError(f"{path}: not a readable redshift table: {err}") from None
    column = next((c for c in REDSHIFT_ALIASES if c in table.columns), None)
    if ID_COLUMN not in table.columns or column is None:
        raise InputError(f"{path}: needs columns 'source_id' and one of {', '.join(REDSHIFT_ALIASES)}")
    return table[[ID_COLUMN, column]].rename(columns={column: TARGET_COLUMN})


def join_redshifts(spectra: pd.DataFrame, redshifts: pd.DataFrame, source: str) -> pd.DataFrame:
    """Attach redshifts by source_id; galaxies without one are an error naming them."""
    merged = spectra.merge(redshifts, on=ID_COLUMN, how="left")
    lacking = merged.loc[merged[TARGET_COLUMN].isna(), ID_COLUMN]
    if len(lacking):
        raise InputError(f"{source}: no redshift for source_id {describe_rows(lacking.tolist())}")
    return merged[list(DATASET_COLUMNS)]


def detect_format(path: Path | str) -> str:
    """'parquet', 'gaia' (XP continuous in any container) or 'csv' (the seed's layout), from the bytes
    (`xpz.data.formats.input_format`)."""
    from xpz.data.formats import input_format

    return input_format(path)


def read_spectra(
    path: Path | str, fmt: str = "auto", with_target: bool = True, redshifts: Path | str | None = None
) -> pd.DataFrame:
    """Read any supported input into the dataset schema (without `z` when `with_target` is False)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "parquet":
        return read_dataset(path, with_target=with_target)
    if fmt == "csv":
        return read_seed_csv(path, with_target=with_target)
    if fmt == "gaia":
        spectra, rejects = read_xp_continuous(path)
        if spectra.empty:
            raise InputError(
                f"{path}: no usable source ({len(rejects)} rejected: {rejects['reject_reason'].iloc[0]})"
            )
        if not with_target:
            return spectra
        if redshifts is None:
            raise InputError(
                f"{path}: Gaia XP spectra carry no redshift; pass a redshift table (--redshifts)"
            )
        return join_redshifts(spectra, read_redshift_table(redshifts), str(path))
    raise InputError(f"{path}: unknown format {fmt!r} (expected parquet, csv or gaia)")
