"""Readers and the import command: good files round-trip; each bad input gives one clear message
(file, column, rows), a non-zero exit and no output file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import copy_params, random_frame
from xpz.cli import app
from xpz.data.io import read_dataset, read_seed_csv, write_dataset
from xpz.errors import InputError
from xpz.files import atomic_path
from xpz.spectra import FLUX_COLUMNS

runner = CliRunner()


def seed_csv(path, df, header=False):
    df[["z", *FLUX_COLUMNS]].to_csv(path, index=False, header=header)
    return path


def import_cli(tmp_path, source, *extra):
    params = copy_params(tmp_path)
    out = tmp_path / "out" / "galaxies.parquet"
    result = runner.invoke(
        app,
        [
            "data",
            "import",
            str(source),
            "--params",
            str(params),
            "--profile",
            "smoke",
            "--out",
            str(out),
            *extra,
        ],
    )
    return result, out


def test_seed_csv_roundtrip_with_and_without_header(tmp_path):
    df = random_frame(300)
    for header in (False, True):
        got = read_seed_csv(seed_csv(tmp_path / f"s{header}.csv", df, header=header))
        assert got.shape == (300, 188)
        assert got["source_id"].tolist() == list(range(300))  # row numbers name the galaxies
        np.testing.assert_allclose(got["z"], df["z"], rtol=1e-12)
        np.testing.assert_allclose(got[list(FLUX_COLUMNS)], df[list(FLUX_COLUMNS)], rtol=1e-6)
        assert got["flux_000"].dtype == np.float32 and got["source_id"].dtype == np.int64


def test_seed_csv_header_in_our_names_is_matched_by_name_not_position(tmp_path):
    df = random_frame(50)
    reordered = tmp_path / "reordered.csv"
    df[[*FLUX_COLUMNS[::-1], "z"]].to_csv(reordered, index=False)  # fluxes reversed, z last
    got = read_seed_csv(reordered)
    np.testing.assert_allclose(got["z"], df["z"], rtol=1e-12)
    np.testing.assert_allclose(got[list(FLUX_COLUMNS)], df[list(FLUX_COLUMNS)], rtol=1e-6)
    # a header naming 185 fluxes after z has 186 columns, the count of the headerless layout: by
    # position z would have become a flux; by name flux_185 is missing
    short = tmp_path / "short.csv"
    df[["z", *FLUX_COLUMNS[:185]]].to_csv(short, index=False)
    with pytest.raises(InputError, match=r"short\.csv: missing column\(s\) flux_185"):
        read_seed_csv(short)


def test_fractional_source_id_is_refused_not_truncated(tmp_path):
    df = random_frame(20)
    df["source_id"] = df["source_id"].astype(float)
    df.loc[[3, 7], "source_id"] += 0.5  # int64 would make 3.5 into 3: another source's id
    with pytest.raises(InputError, match=r"'source_id' has non-integer values in rows 3, 7"):
        read_dataset(write_dataset_unchecked(df, tmp_path / "frac.parquet"))


def write_dataset_unchecked(df, path):
    df.to_parquet(path, index=False)
    return path


def test_binary_file_read_as_csv_is_a_clear_error(tmp_path):
    parquet = write_dataset(random_frame(20), tmp_path / "galaxies.parquet")
    with pytest.raises(InputError, match=r"galaxies\.parquet: not a text CSV.*--format"):
        read_seed_csv(parquet)


def test_import_good_csv_writes_parquet(tmp_path):
    result, out = import_cli(tmp_path, seed_csv(tmp_path / "ok.csv", random_frame(300)))
    assert result.exit_code == 0, result.output
    assert read_dataset(out).shape == (300, 188)


def _bad_csv(tmp_path, kind):
    df = random_frame(300)
    path = tmp_path / f"{kind}.csv"
    if kind == "185_fluxes":
        df[["z", *FLUX_COLUMNS[:-1]]].to_csv(path, index=False, header=False)
        return path
    table = df[["z", *FLUX_COLUMNS]].astype(object)
    if kind == "non_numeric":
        table.iloc[17, 5] = "abc"
    elif kind == "nan":
        table.iloc[42, 10] = np.nan
    elif kind == "inf":
        table.iloc[42, 10] = np.inf
    elif kind == "z_high":
        table.iloc[7, 0] = 0.9
    elif kind == "z_negative":
        table.iloc[7, 0] = -0.1
    table.to_csv(path, index=False, header=False)
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("185_fluxes", ["expected 187 columns", "found 186"]),
        ("non_numeric", ["'flux_004'", "rows 17", "'abc'"]),
        ("nan", ["n_nonfinite", "source_id 42", "flux_009"]),
        ("inf", ["n_nonfinite", "source_id 42", "flux_009"]),
        ("z_high", ["'z'", "1 rows", "source_id 7"]),
        ("z_negative", ["'z'", "1 rows", "source_id 7"]),
    ],
)
def test_bad_csv_is_refused_clearly(tmp_path, kind, expected):
    source = _bad_csv(tmp_path, kind)
    result, out = import_cli(tmp_path, source)
    assert result.exit_code == 2, result.output
    assert str(source) in result.output
    for text in expected:
        assert text in result.output, (text, result.output)
    assert not out.exists()


def test_duplicate_ids_in_parquet(tmp_path):
    df = random_frame(300)
    df.loc[5, "source_id"] = df.loc[6, "source_id"]
    source = tmp_path / "dup.parquet"
    df.to_parquet(source, index=False)
    result, out = import_cli(tmp_path, source)
    assert result.exit_code == 2
    assert "unique" in result.output and str(df.loc[6, "source_id"]) in result.output
    assert not out.exists()


def test_empty_file(tmp_path):
    source = tmp_path / "empty.csv"
    source.write_text("")
    result, out = import_cli(tmp_path, source)
    assert result.exit_code == 2 and "empty" in result.output and not out.exists()


def test_truncated_parquet(tmp_path):
    good = write_dataset(random_frame(300), tmp_path / "good.parquet")
    source = tmp_path / "truncated.parquet"
    source.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    result, out = import_cli(tmp_path, source)
    assert result.exit_code == 2 and "truncated" in result.output and str(source) in result.output
    assert not out.exists()
    with pytest.raises(InputError):
        read_dataset(source)


def test_gaia_file_with_missing_band(tmp_path):
    source = tmp_path / "xp.csv"
    coeffs = "[" + ", ".join(["1.0"] * 55) + "]"
    pd.DataFrame({"source_id": [1, 2], "bp_coefficients": [coeffs, coeffs]}).to_csv(source, index=False)
    result, out = import_cli(tmp_path, source, "--redshifts", str(source))
    assert result.exit_code == 2
    assert "rp_coefficients" in result.output and str(source) in result.output
    assert not out.exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _cut_seed_csv(tmp_path, name, header, row, fields, keep_rest=False):
    """The seed's CSV (300 galaxies) whose 0-based data row `row` keeps only its first `fields`
    fields: the file ends there (a download cut mid-row), or, with `keep_rest`, the rows after it follow."""
    path = seed_csv(tmp_path / f"{name}.csv", random_frame(300), header=header)
    lines = path.read_text().splitlines(keepends=True)
    at = row + (1 if header else 0)
    short = ",".join(lines[at].split(",")[:fields])
    path.write_text("".join(lines[:at]) + short + ("\n" + "".join(lines[at + 1 :]) if keep_rest else ""))
    return path


@pytest.mark.parametrize("header", [False, True], ids=["headerless", "header"])
def test_seed_csv_cut_mid_row_names_the_row_and_its_fields_not_a_nan(tmp_path, header):
    """A seed CSV that ends mid-row was reported as a NaN flux in that row (pandas pads the row);
    the message says the file ends mid-row, which row (and line), and how many fields it has."""
    from xpz.data.stream import iter_spectra

    source = _cut_seed_csv(tmp_path, "cut", header, row=40, fields=94)
    line = 42 if header else 41
    expected = (
        f"{source}: the file ends mid-row (truncated?): row 40 (0-based, header excluded; "
        f"line {line} of the file) has 94 fields, 187 expected"
    )
    with pytest.raises(InputError) as err:
        read_seed_csv(source)
    assert str(err.value) == expected
    for chunk_size in (16, 41, 1000):  # the prediction reader: the cut row in a short or a full chunk
        with pytest.raises(InputError) as err:
            list(iter_spectra(source, chunk_size=chunk_size))
        assert str(err.value) == expected, chunk_size
    result, out = import_cli(tmp_path, source)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {expected}"]
    assert not out.exists()


def test_seed_csv_row_with_too_few_fields_inside_the_file(tmp_path):
    from xpz.data.stream import iter_spectra

    source = _cut_seed_csv(tmp_path, "short", False, row=40, fields=100, keep_rest=True)
    expected = (
        f"{source}: too few fields: row 40 (0-based, header excluded; line 41 of the file) "
        "has 100 fields, 187 expected"
    )
    with pytest.raises(InputError) as err:
        read_seed_csv(source)
    assert str(err.value) == expected
    with pytest.raises(InputError) as err:
        list(iter_spectra(source, chunk_size=64))
    assert str(err.value) == expected


def test_seed_csv_empty_value_is_still_a_nan_not_a_short_row(tmp_path):
    """A row with all its fields, the last one empty, is a missing value (n_nonfinite), as before."""
    df = random_frame(300)
    table = df[["z", *FLUX_COLUMNS]].astype(object)
    table.iloc[42, -1] = ""
    source = tmp_path / "empty_value.csv"
    table.to_csv(source, index=False, header=False)
    got = read_seed_csv(source)
    assert np.isnan(got.loc[42, "flux_185"]) and got.shape == (300, 188)
