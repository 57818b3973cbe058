"""What a spectra file is, from its bytes: container (gzip, zip, Parquet, FITS, VOTable, ECSV, CSV)
and product (Gaia XP continuous, our flux Parquet, the seed's CSV, or something xpz cannot use).

`identify(path) -> FileKind` reads only the head of a file (a few hundred kB after decompression,
the FITS header, the Parquet footer), never the whole of a multi-GB bulk file. Products xpz cannot
predict from (XP_SAMPLED wide or one row per wavelength, gaiaxpy convert/calibrate outputs, RVS
spectra, a list of source ids, random bytes, truncated files, an empty zip) raise `InputError` with
one message naming the file, what it looks like and what xpz needs instead (`NEEDED`).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from xpz.errors import InputError
from xpz.spectra import FLUX_COLUMNS, ID_COLUMN, N_COEFFS

NEEDED = (
    "xpz needs Gaia DR3 XP continuous mean spectra (source_id, bp_coefficients, rp_coefficients with "
    f"{N_COEFFS} values each: the archive's gaiadr3.xp_continuous_mean_spectrum, DataLink XP_CONTINUOUS, "
    "or the bulk XpContinuousMeanSpectrum files), our Parquet (source_id, flux_000..flux_185) or the seed's "
    "CSV (z and 186 fluxes)"
)
HEAD_BYTES = 256 * 1024
COEFF_COLUMNS = ("bp_coefficients", "rp_coefficients")
XP_SAMPLED_LENGTH = 343  # 336-1020 nm in steps of 2 nm
RVS_LENGTH = 2401  # 846-870 nm in steps of 0.01 nm

_GZIP, _ZIP, _PARQUET = b"\x1f\x8b", (b"PK\x03\x04", b"PK\x05\x06"), b"PAR1"
_FITS = b"SIMPLE  ="


@dataclass
class FileKind:
    """`container`: parquet | fits | votable | ecsv | csv | zip; `product`: xp_continuous | fluxes
    (our Parquet schema or a headed flux CSV) | seed_csv; `columns` as found (original case)."""

    path: Path
    container: str
    product: str
    gzip: bool = False
    columns: list[str] = field(default_factory=list)
    header_lines: int = 0  # text: lines before the column-name line ('#' comments, the ECSV header)
    delimiter: str = ","

    def column(self, name: str) -> str:
        """The file's spelling of a column, matched without regard to case (SOURCE_ID)."""
        for c in self.columns:
            if c.lower() == name:
                return c
        raise KeyError(name)


def refuse(path: Path | str, looks_like: str) -> InputError:
    return InputError(f"{path}: this looks like {looks_like}; {NEEDED}")


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped on the fly when they start with the gzip magic."""
    fh = open(path, "rb")
    if fh.read(2) == _GZIP:
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    fh.seek(0)
    return fh


def read_head(path: Path, n: int = HEAD_BYTES) -> tuple[bytes, bool]:
    """The first `n` bytes (decompressed) and whether the file is gzipped; truncated gzip -> InputError."""
    with open(path, "rb") as raw:
        zipped = raw.read(2) == _GZIP
    try:
        with open_binary(path) as fh:
            return fh.read(n), zipped
    except (EOFError, OSError, zlib.error) as err:
        raise InputError(f"{path}: a truncated or corrupt gzip file ({err}); {NEEDED}") from None


def _lower(columns: list[str]) -> list[str]:
    return [c.strip().lower() for c in columns]


def product_of(path: Path, columns: list[str], first_values: Mapping[str, object] | None = None) -> str:
    """Classify by column names (any case); raise the refusal for products xpz cannot use."""
    cols = _lower(columns)
    have = [c for c in COEFF_COLUMNS if c in cols]
    if have:
        if ID_COLUMN not in cols:
            raise InputError(
                f"{path}: Gaia XP coefficients but no source_id column (found: {', '.join(columns[:8])}); {NEEDED}"
            )
        if len(have) == 1:
            other = "rp_coefficients" if have[0] == "bp_coefficients" else "bp_coefficients"
            raise InputError(
                f"{path}: has {have[0]} but no {other} column; xpz needs both BP and RP (55 coefficients each) per source"
            )
        return "xp_continuous"
    if FLUX_COLUMNS[0] in cols:
        return "fluxes"
    values = first_values or {}
    if "wavelength" in cols and "flux" in cols:
        wl = _number(values.get("wavelength"))
        if wl is not None and 840 <= wl <= 875:
            raise refuse(path, "an RVS spectrum, one row per wavelength (846-870 nm)")
        raise refuse(
            path,
            "a sampled spectrum with one row per wavelength (DataLink XP_SAMPLED, 336-1020 nm, or gaiaxpy output)",
        )
    if "flux" in cols:
        n = _length(values.get("flux"))
        if "xp" in cols or "band" in cols:
            raise refuse(
                path,
                "gaiaxpy.convert output (internally calibrated sampled BP/RP fluxes, one row per source and band)",
            )
        if n == RVS_LENGTH or "rv_template_teff" in cols:
            raise refuse(path, f"RVS mean spectra ({RVS_LENGTH} fluxes, 846-870 nm)")
        what = f"{n} fluxes" if n else "sampled fluxes"
        raise refuse(path, f"XP_SAMPLED or gaiaxpy.calibrate output ({what} per source in W m^-2 nm^-1, "
                           "externally calibrated on 336-1020 nm)")  # fmt: skip
    if ID_COLUMN in cols and len(cols) <= 4:
        raise refuse(path, f"a list of source ids without spectra (columns {', '.join(columns)})")
    raise refuse(path, f"a table with columns {', '.join(columns[:8])}{' ...' if len(columns) > 8 else ''}")


def _number(value: object) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def _length(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return len([v for v in re.split(r"[,\s]+", value.strip("[]() \"")) if v]) or None
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_file(path: Path) -> None:
    """InputError unless `path` is an existing, non-empty file (the cheap checks before any read)."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass one file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")


def identify(path: Path | str) -> FileKind:
    """Container and product of one file, from its bytes (the suffix is never trusted)."""
    path = Path(path)
    check_file(path)
    head, zipped = read_head(path)
    if not head:
        raise InputError(f"{path}: the file is empty (after gzip decompression)")
    if head.startswith(_ZIP):
        if head.startswith(b"PK\x05\x06"):
            raise InputError(f"{path}: an empty zip archive; {NEEDED}")
        raise InputError(f"{path}: a zip archive: `xpz predict` reads DataLink zips; to import, unzip it and "
                         "import its XP_CONTINUOUS file")  # fmt: skip
    if head.startswith(_PARQUET):
        return _identify_parquet(path, zipped)
    if head.startswith(_FITS):
        return _identify_fits(path, zipped)
    text_head = head[:4096].lstrip()
    if text_head.startswith(b"<?xml") or b"<VOTABLE" in head[:4096]:
        return _identify_votable(path, zipped, head)
    if b"\x00" in head[:4096]:
        raise refuse(path, "binary data of no format xpz knows (not Parquet, FITS, VOTable, CSV or ECSV)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the head
            raise refuse(path, "binary data of no format xpz knows (not UTF-8 text)") from None
        text = head[: err.start].decode("utf-8")
    return _identify_text(path, zipped, text)


def _identify_parquet(path: Path, zipped: bool) -> FileKind:
    import pyarrow.parquet as pq

    if zipped:
        raise refuse(path, "a gzipped Parquet file (Parquet compresses itself: gunzip it first)")
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        # only the columns `product_of` reads a value of (not the whole first row group, read
        # again by every caller: several times per file on the prediction path)
        wanted = [n for n in names if n.lower() in ("flux", "wavelength")]
        first = (
            pf.read_row_group(0, columns=wanted).slice(0, 1).to_pylist()[0]
            if wanted and pf.metadata.num_rows
            else {}
        )
    except Exception as err:  # pyarrow raises several kinds; the message is what matters
        raise InputError(f"{path}: not a readable Parquet file (truncated or corrupt?): {err}") from None
    if not names:
        raise InputError(f"{path}: a Parquet file without columns; {NEEDED}")
    first = {k.lower(): v for k, v in first.items()}
    product = product_of(path, names, first)
    return FileKind(path, "parquet", product, columns=names)


def _identify_fits(path: Path, zipped: bool) -> FileKind:
    from astropy.io import fits

    if not zipped and path.stat().st_size % 2880:  # a FITS file is whole 2880-byte blocks
        raise InputError(f"{path}: a truncated or corrupt FITS file ({path.stat().st_size} bytes, not a multiple "
                         f"of 2880); {NEEDED}")  # fmt: skip
    try:
        with fits.open(open_binary(path) if zipped else path, memmap=False, lazy_load_hdus=True) as hdul:
            tables = [h for h in hdul[1:] if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
            if not tables:
                raise refuse(path, "a FITS file without a table extension (an image?)")
            names = list(tables[0].columns.names)
            first = {}
            if "flux" in _lower(names) and tables[0].header.get("NAXIS2", 0):
                try:
                    first = {
                        n.lower(): tables[0].data[n][0] for n in names if n.lower() in ("flux", "wavelength")
                    }
                except Exception:
                    first = {}
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: not a readable FITS file (truncated or corrupt?): {err}") from None
    return FileKind(path, "fits", product_of(path, names, first), gzip=zipped, columns=names)


_FIELD = re.compile(rb"<FIELD\b[^>]*?\bname\s*=\s*[\"']([^\"']+)[\"']", re.S)


def _identify_votable(path: Path, zipped: bool, head: bytes) -> FileKind:
    if b"<VOTABLE" not in head:
        raise refuse(path, "an XML file that is not a VOTable")
    names = [m.decode() for m in _FIELD.findall(head)]
    if not names:
        raise refuse(path, "a VOTable without a table")
    first = {}
    if "flux" in _lower(names):
        first = _votable_first_row(path)
    return FileKind(path, "votable", product_of(path, names, first), gzip=zipped, columns=names)


def _votable_first_row(path: Path) -> dict[str, object]:
    from astropy.table import Table

    try:
        with open_binary(path) as fh:
            table = Table.read(io.BytesIO(fh.read()), format="votable")
        return (
            {c.lower(): table[c][0] for c in table.colnames if c.lower() in ("flux", "wavelength")}
            if len(table)
            else {}
        )
    except Exception:
        return {}


def _identify_text(path: Path, zipped: bool, text: str) -> FileKind:
    lines = text.splitlines()
    if len(lines) > 1 and len(text) >= HEAD_BYTES - 8:
        lines = lines[:-1]  # the last line may be cut by the head's end
    n_comment = 0
    while n_comment < len(lines) and (lines[n_comment].startswith("#") or not lines[n_comment].strip()):
        n_comment += 1
    ecsv = bool(lines) and lines[0].startswith("# %ECSV")
    delimiter = _ecsv_delimiter(path, lines[:n_comment]) if ecsv else ","
    if n_comment >= len(lines):
        if ecsv or n_comment:
            raise InputError(f"{path}: the file holds no rows (only a header)")
        raise refuse(path, "text without a table")
    rows = list(csv.reader(lines[n_comment : n_comment + 2], delimiter=delimiter, skipinitialspace=True))
    header = [c.strip() for c in rows[0]]
    first = dict(zip(_lower(header), rows[1])) if len(rows) > 1 else {}
    container = "ecsv" if ecsv else "csv"
    if all(_number(v) is not None for v in header if v.strip()):
        if len(header) < 20:  # a few numbers a line: not spectra
            raise refuse(path, f"a headerless text table of {len(header)} numbers per line")
        return FileKind(path, container, "seed_csv", zipped, header, n_comment, delimiter)
    values = list(first.values())
    if len(header) in (186, 187, 188) and values and sum(_number(v) is not None for v in values) >= 186:
        return FileKind(
            path, container, "seed_csv", zipped, header, n_comment, delimiter
        )  # seed CSV, own header
    product = product_of(path, header, first)
    if product == "xp_continuous" and len(rows) < 2:
        raise InputError(f"{path}: the file holds no rows")
    return FileKind(path, container, product, zipped, header, n_comment, delimiter)


def _ecsv_delimiter(path: Path, header_lines: list[str]) -> str:
    """The delimiter from the ECSV YAML header, parsed by astropy (space or comma)."""
    from astropy.table.meta import YamlParseError, get_header_from_yaml

    stripped = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in header_lines if ln.startswith("#")]
    try:
        meta = get_header_from_yaml(stripped)
    except (YamlParseError, Exception) as err:
        raise InputError(f"{path}: an ECSV file whose YAML header astropy cannot parse: {err}") from None
    return str(meta.get("delimiter", " "))


def input_format(path: Path | str) -> str:
    """'gaia' (XP continuous, any container), 'parquet' (our flux schema) or 'csv' (the seed's CSV)."""
    kind = identify(path)
    if kind.product == "xp_continuous":
        return "gaia"
    if kind.container == "parquet":
        return "parquet"
    if kind.container in ("csv", "ecsv") and not kind.gzip:
        return "csv"
    raise refuse(path, f"a {'gzipped ' if kind.gzip else ''}{kind.container.upper()} table of sampled fluxes "
                       "(write our Parquet schema or the seed's plain CSV instead)")  # fmt: skip
