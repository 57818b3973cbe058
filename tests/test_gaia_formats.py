"""Gaia XP files as users bring them (issue 11): real DR3 files in every archive format, gzipped,
upper-case ids, `null` markers, Parquet, DataLink bundles; mixed-quality files lose nothing; files
that are not XP continuous say what they are. The tiny registered model (`registered`) predicts.
"""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import copy_params
from xpz.data.io import read_xp_continuous
from xpz.errors import InputError
from xpz.spectra import FLUX_COLUMNS, flux_matrix

FIXTURES = Path(__file__).parent / "fixtures" / "gaia_xp"
GOOD = [5853498713190525696, 5762406957886626816]
NO_BP = 5405570973190252288
MIXED_IDS = [GOOD[0], NO_BP, GOOD[1]]


def _gz(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes()))
    return dst


def _upper_ids(src: Path, dst: Path) -> Path:
    dst.write_text(src.read_text().replace("source_id", "SOURCE_ID"))
    return dst


def _null_markers(dst: Path) -> Path:
    """The bulk download's ECSV style: `null` for missing values (the no-BP source), and a `null`
    as the first BP coefficient of the third source."""
    out = []
    for line in (FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv").read_text().splitlines():
        if line.startswith(str(NO_BP)):
            while ",," in line:
                line = line.replace(",,", ",null,")
        elif line.startswith(str(GOOD[1])):
            start = line.index('"[') + 2
            line = line[:start] + "null" + line[line.index(",", start) :]
        out.append(line)
    dst.write_text("\n".join(out) + "\n")
    return dst


def _parquet(dst: Path, lists: bool) -> Path:
    frame = pd.read_csv(FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    if lists:
        for c in ("bp_coefficients", "rp_coefficients"):
            frame[c] = [
                None if pd.isna(v) else [float(x) for x in v.strip("()").split(",")] for v in frame[c]
            ]
        frame = frame[["rp_coefficients", "source_id", "bp_coefficients"]]  # reduced and reordered
    frame.to_parquet(dst, index=False)  # text cells "(...)": a query result saved with pandas
    return dst


def _reduced_csv(dst: Path) -> Path:
    frame = pd.read_csv(FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    frame[["rp_coefficients", "source_id", "bp_coefficients"]].rename(
        columns={"source_id": "SOURCE_ID"}
    ).to_csv(dst, index=False)
    return dst


def mixed_files(tmp: Path) -> dict[str, Path]:
    """The 3-source file (middle one without BP) in every container xpz reads."""
    src = {s: FIXTURES / f"XP_CONTINUOUS_RAW_with_missing_BP.{s}" for s in ("csv", "ecsv", "fits", "xml")}
    return {
        **{f"{s}": p for s, p in src.items()},
        "csv.gz": _gz(src["csv"], tmp / "mixed.csv.gz"),
        "ecsv as .csv.gz (bulk layout)": _gz(
            src["ecsv"], tmp / "XpContinuousMeanSpectrum_000000-003111.csv.gz"
        ),
        "fits.gz": _gz(src["fits"], tmp / "mixed.fits.gz"),
        "votable, no suffix": Path(shutil.copy(src["xml"], tmp / "mixed_votable")),
        "upper-case SOURCE_ID (ecsv)": _upper_ids(src["ecsv"], tmp / "upper.ecsv"),
        "reduced, reordered columns (csv)": _reduced_csv(tmp / "reduced.csv"),
        "parquet, list columns": _parquet(tmp / "lists.parquet", lists=True),
        "parquet, text arrays": _parquet(tmp / "text.parquet", lists=False),
    }


def good_files(tmp: Path) -> dict[str, Path]:
    names = {"csv": "XP_CONTINUOUS_RAW.csv", "ecsv": "XP_CONTINUOUS_RAW.ecsv", "fits": "XP_CONTINUOUS_RAW.fits",
             "votable BINARY2": "XP_CONTINUOUS_RAW.xml", "votable TABLEDATA": "XP_CONTINUOUS_RAW_plain.xml"}  # fmt: skip
    files = {k: FIXTURES / v for k, v in names.items()}
    files["votable BINARY"] = _votable_binary(tmp / "binary.vot")
    bundle = tmp / "datalink zip.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.write(FIXTURES / "XP_CONTINUOUS_RAW.xml", "XP_CONTINUOUS_RAW-Gaia DR3 5853498713190525696.xml")
        zf.write(FIXTURES / "XP_SAMPLED_RAW_dr3int6.csv", "XP_SAMPLED-Gaia DR3 6.csv")  # skipped, listed
    files["datalink zip"] = bundle
    folder = tmp / "DataLink folder"
    folder.mkdir()
    shutil.copy(FIXTURES / "XP_CONTINUOUS_RAW.fits", folder / "XP_CONTINUOUS-Gaia DR3 combined.fits")
    files["datalink folder"] = folder
    return files


def _votable_binary(dst: Path) -> Path:
    from astropy.table import Table

    Table.read(FIXTURES / "XP_CONTINUOUS_RAW_plain.xml").write(
        dst, format="votable", tabledata_format="binary"
    )
    assert b"<BINARY>" in dst.read_bytes()
    return dst


# ----------------------------------------------------------------------------------- reading


def test_every_container_gives_the_same_fluxes_and_rejects(tmp_path):
    reference, _ = read_xp_continuous(FIXTURES / "XP_CONTINUOUS_RAW.csv")
    assert reference["source_id"].tolist() == GOOD
    assert np.isfinite(flux_matrix(reference)).all() and flux_matrix(reference).max() > 100
    for name, path in mixed_files(tmp_path).items():
        spectra, rejects = read_xp_continuous(path)
        assert spectra["source_id"].tolist() == GOOD, name
        np.testing.assert_allclose(flux_matrix(spectra), flux_matrix(reference), rtol=1e-6, err_msg=name)
        assert rejects.to_dict("records") == [
            {"row": 1, "source_id": NO_BP, "reject_reason": "no BP spectrum"}
        ], name


def test_null_markers_reject_the_source_not_the_file(tmp_path):
    spectra, rejects = read_xp_continuous(_null_markers(tmp_path / "nulls.ecsv"))
    assert spectra["source_id"].tolist() == [GOOD[0]]
    assert rejects["source_id"].tolist() == [NO_BP, GOOD[1]]
    assert rejects["reject_reason"].tolist() == ["no BP spectrum", "BP has non-finite coefficients"]


# -------------------------------------------------------------------------------- prediction


def run_cli(*args: str):
    from xpz.cli import app

    result = CliRunner().invoke(app, [*args])
    return result.exit_code, result.output


def predict(registered, source: Path, out: Path, *extra: str):
    return run_cli("predict", str(source), "--model", registered.champion, "--out", str(out),
                   "--tracking-uri", registered.tracking_uri, "--no-progress", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def expected_z(registered):
    from xpz.serving.batch import load_predictor

    spectra, _ = read_xp_continuous(FIXTURES / "XP_CONTINUOUS_RAW.csv")
    pred = load_predictor(registered.champion, registered.tracking_uri).predict(flux_matrix(spectra))
    assert np.isfinite(pred["z"]).all()
    return pred["z"].to_numpy()


def test_one_answer_per_spectrum_from_every_format(registered, expected_z, tmp_path):
    spectra, _ = read_xp_continuous(FIXTURES / "XP_CONTINUOUS_RAW.csv")
    ours = tmp_path / "ours.parquet"
    spectra.to_parquet(ours, index=False)
    seed = tmp_path / "seed.csv"
    spectra.assign(z=0.1)[["z", *FLUX_COLUMNS]].to_csv(seed, header=False, index=False)
    files = {**good_files(tmp_path), "our parquet": ours, "seed csv": seed}
    for name, path in files.items():
        out = tmp_path / f"{name}.parquet"
        code, text = predict(registered, path, out)
        assert code == 0, f"{name}: {text}"
        got = pd.read_parquet(out)
        assert len(got) == 2, name
        if name != "seed csv":  # the seed's CSV has no ids: row numbers name the galaxies
            assert got["source_id"].tolist() == GOOD, name
        np.testing.assert_allclose(got["z"].to_numpy(), expected_z, rtol=0, atol=1e-6, err_msg=name)
        assert got["reject_reason"].isna().all(), name
    code, text = predict(registered, files["datalink zip"], tmp_path / "zip.parquet")
    assert "skipped XP_SAMPLED-Gaia DR3 6.csv" in text and "XP_SAMPLED" in text


def test_mixed_file_predicts_two_and_rejects_one_in_every_container(registered, expected_z, tmp_path):
    for name, path in mixed_files(tmp_path).items():
        out = tmp_path / "pred.parquet"
        code, text = predict(registered, path, out, "--chunk-size", "2")
        assert code == 0, f"{name}: {text}"
        got = pd.read_parquet(out)
        assert got["source_id"].tolist() == MIXED_IDS, name  # one row per input source, in order
        np.testing.assert_allclose(got["z"].to_numpy()[[0, 2]], expected_z, rtol=0, atol=1e-6, err_msg=name)
        assert np.isnan(got.loc[1, ["z", "z_lower", "z_upper"]].to_numpy(float)).all()
        assert got["reject_reason"].isna().tolist() == [True, False, True], name
        assert got.loc[1, "reject_reason"] == "no BP spectrum", name
        assert "1 of 3 sources not predicted" in text, text


def test_strict_turns_a_reject_into_exit_2_with_nothing_written(registered, tmp_path):
    out = tmp_path / "pred.parquet"
    source = FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv"
    code, text = predict(registered, source, out, "--strict")
    assert code == 2, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(source) in lines[0] and f"source_id {NO_BP} (no BP spectrum)" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    code, text = predict(registered, FIXTURES / "XP_CONTINUOUS_RAW.fits", out, "--strict")
    assert code == 0 and out.exists(), text  # nothing rejected: strict changes nothing


# ---------------------------------------------------------------------------- refused files


def _refused(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    wl = np.arange(336.0, 1021.0, 2.0)
    long = tmp / "XP_SAMPLED-Gaia DR3 6.csv"
    pd.DataFrame({"wavelength": wl, "flux": 1e-16, "flux_error": 1e-18}).to_csv(long, index=False)
    rvs = tmp / "RVS-Gaia DR3 6.xml"
    from astropy.table import Table

    Table(
        {"wavelength": np.linspace(846, 870, 2401), "flux": np.ones(2401), "flux_error": np.ones(2401)}
    ).write(rvs, format="votable")
    convert = tmp / "output_spectra.csv"
    pd.DataFrame(
        {
            "source_id": [1, 1],
            "xp": ["BP", "RP"],
            "flux": ["(1.0, 2.0)"] * 2,
            "flux_error": ["(0.1, 0.1)"] * 2,
        }
    ).to_csv(convert, index=False)
    calibrate = tmp / "calibrated.fits"
    Table({"source_id": [1, 2], "flux": np.ones((2, 343)), "flux_error": np.ones((2, 343))}).write(
        calibrate, format="fits"
    )
    ids = tmp / "ids.csv"
    pd.DataFrame({"source_id": GOOD}).to_csv(ids, index=False)
    noise = tmp / "noise.ecsv"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    full = _gz(FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv", tmp / "whole.csv.gz").read_bytes()
    truncated_gz = tmp / "truncated.csv.gz"
    truncated_gz.write_bytes(full[: len(full) // 2])
    lines = (FIXTURES / "XP_CONTINUOUS_RAW.ecsv").read_text().splitlines(keepends=True)
    n_head = next(i for i, ln in enumerate(lines) if not ln.startswith("#")) + 1
    big = gzip.compress(
        "".join(lines[:n_head] + lines[n_head:] * 150).encode()
    )  # ~6 MB: past the sniffed head
    truncated_late = tmp / "bulk_truncated.csv.gz"
    truncated_late.write_bytes(big[: int(len(big) * 0.8)])
    fits_bytes = (FIXTURES / "XP_CONTINUOUS_RAW.fits").read_bytes()
    truncated_fits = tmp / "truncated.fits"
    truncated_fits.write_bytes(fits_bytes[: 2880 * 3 + 100])
    empty_zip = tmp / "empty.zip"
    zipfile.ZipFile(empty_zip, "w").close()
    looks = "this looks like"
    return {
        "XP_SAMPLED wide": (FIXTURES / "XP_SAMPLED_RAW_dr3int6.csv", [looks, "XP_SAMPLED", "343 fluxes"]),
        "XP_SAMPLED one row per wavelength": (long, [looks, "one row per wavelength", "XP_SAMPLED"]),
        "RVS": (rvs, [looks, "RVS"]),
        "gaiaxpy convert": (convert, [looks, "gaiaxpy.convert"]),
        "gaiaxpy calibrate": (calibrate, [looks, "gaiaxpy.calibrate"]),
        "id list": (ids, [looks, "list of source ids"]),
        "random bytes": (noise, [looks, "binary data"]),
        "truncated gzip": (truncated_gz, ["truncated or corrupt gzip"]),
        "truncated gzip, past the head": (truncated_late, ["cut short (truncated?)", "the text ends in row"]),
        "truncated fits": (truncated_fits, ["truncated or corrupt"]),
        "empty zip": (empty_zip, ["empty zip"]),
    }


def test_files_that_are_not_xp_continuous_say_what_they_are(registered, tmp_path):
    out = tmp_path / "pred.parquet"
    params = copy_params(tmp_path)
    for case, (path, needles) in _refused(tmp_path).items():
        for command in (
            ["predict", str(path), "--model", registered.champion, "--out", str(out), "--tracking-uri",
             registered.tracking_uri, "--no-progress"],
            ["data", "import", str(path), "--params", str(params), "--out", str(out), "--redshifts", str(path)],
        ):  # fmt: skip
            code, text = run_cli(*command)
            assert code == 2, f"{case}: {text}"
            lines = [ln for ln in text.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {text}"
            assert str(path) in lines[0] and "Traceback" not in text, f"{case}: {text}"
            for needle in needles:
                assert needle in lines[0], f"{case}: {needle!r} not in {lines[0]!r}"
            if "looks like" in lines[0]:
                assert "xpz needs Gaia DR3 XP continuous" in lines[0]
            assert not out.exists(), case


def _cut_in_row(lines: list[str], row: int, n_head: int) -> str:
    """The text up to data row `row` (0-based), that row cut after its 9th field (before the
    quoted bp_coefficients cell): a download that stopped mid-row."""
    line = lines[n_head + row]
    return "".join(lines[: n_head + row]) + line[: line.index(',"')]


def test_a_truncated_archive_file_names_the_row_it_ends_in_not_its_read_block(tmp_path):
    """Was "near row 0" for any cut in the first 8 MiB read block (the block's first row). Now the
    row the file ends in, 0-based as the module's other messages and the rejects' `row`, with its line."""
    from xpz.data.stream import iter_spectra

    csv_lines = (FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.csv").read_text().splitlines(keepends=True)
    ecsv_lines = (FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv").read_text().splitlines(keepends=True)
    n_ecsv = next(i for i, ln in enumerate(ecsv_lines) if not ln.startswith("#")) + 1  # comments, names
    many = csv_lines[:1] + csv_lines[1:] * 100  # 300 rows, all in Arrow's first read block
    first = tmp_path / "first row.csv"
    first.write_text(_cut_in_row(csv_lines, 0, 1))
    late = tmp_path / "late.csv"
    late.write_text(_cut_in_row([*many, csv_lines[1]], 300, 1))
    ecsv = tmp_path / "cut.ecsv"
    ecsv.write_text(_cut_in_row(ecsv_lines, 2, n_ecsv))
    damaged = tmp_path / "damaged.csv"  # a short row with whole rows after it
    damaged.write_text(_cut_in_row(csv_lines, 1, 1) + "\n" + "".join(csv_lines[3:]))
    ends = "the file ends mid-row (truncated?)"
    cases = {
        first: f"{ends}: row 0 (0-based, header excluded; line 2 of the file) has 9 fields, 26 expected",
        late: f"{ends}: row 300 (0-based, header excluded; line 302 of the file) has 9 fields, 26 expected",
        ecsv: f"{ends}: row 2 (0-based, header excluded; line {n_ecsv + 3} of the file) has 9 fields, 26 expected",
        damaged: "a damaged row (corrupt file?): row 1 (0-based, header excluded; line 3 of the file) "
        "has 21 fields, 26 expected",  # the source without BP: its bp cells are empty, rp is quoted
    }
    # a gzip download cut short: the text ends in the row the decompressed data stop in
    whole = "".join(many).encode()
    packed = gzip.compress(whole)
    cut_gz = tmp_path / "bulk.csv.gz"
    cut_gz.write_bytes(packed[: int(len(packed) * 0.6)])
    text = b""
    with gzip.open(cut_gz, "rb") as fh:
        with pytest.raises(EOFError):
            while chunk := fh.read1(1 << 16):
                text += chunk
    row = text.count(b"\n") - 1  # the header line, then whole rows
    assert not text.endswith(b"\n") and 0 < row < 300
    cases[cut_gz] = (
        f"the gzip data are cut short (truncated?): the text ends in row {row} (0-based, header excluded; "
        f"line {row + 2} of the decompressed text)"
    )
    # two gzip members, the second cut before any of its data: the text ends after a whole row
    members = tmp_path / "members.csv.gz"
    members.write_bytes(
        gzip.compress("".join(many[:101]).encode()) + gzip.compress("".join(many[101:]).encode())[:10]
    )
    cases[members] = (
        "the gzip data are cut short (truncated?): the text ends after row 99 (0-based, header excluded; "
        "line 101 of the decompressed text)"
    )
    params = copy_params(tmp_path)
    for path, message in cases.items():
        for read in (read_xp_continuous, lambda p: list(iter_spectra(p, chunk_size=7))):
            with pytest.raises(InputError) as err:
                read(path)
            assert str(err.value).startswith(f"{path}: {message}"), (path, str(err.value))
        code, output = run_cli("data", "import", str(path), "--params", str(params), "--out",
                               str(tmp_path / "out.parquet"), "--redshifts", str(path))  # fmt: skip
        assert code == 2 and output.strip().splitlines()[0].startswith(f"error: {path}: {message}"), output
        assert len(output.strip().splitlines()) == 1 and not (tmp_path / "out.parquet").exists(), output


# ------------------------------------------------------------------------------------ import


def test_import_applies_the_same_rules_and_writes_a_rejects_report(tmp_path):
    params = copy_params(tmp_path)  # the fixtures are 3 bright stars: relax the galaxy-set checks
    params.write_text(
        params.read_text()
        .replace("min_rows: 1000", "min_rows: 1")
        .replace("flux_max: 2000.0", "flux_max: 1.0e9")
    )
    redshifts = tmp_path / "z.csv"
    pd.DataFrame({"SOURCE_ID": MIXED_IDS, "z": [0.1, 0.2, 0.3]}).rename(columns=str.lower).to_csv(
        redshifts, index=False
    )
    out = tmp_path / "data" / "galaxies.parquet"
    source = _gz(FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv", tmp_path / "bulk.csv.gz")
    code, text = run_cli(
        "data",
        "import",
        str(source),
        "--params",
        str(params),
        "--out",
        str(out),
        "--redshifts",
        str(redshifts),
    )
    assert code == 0, text
    imported = pd.read_parquet(out)
    assert imported["source_id"].tolist() == GOOD and imported["z"].tolist() == [0.1, 0.3]
    report = pd.read_csv(tmp_path / "data" / "galaxies.rejects.csv")
    assert report.to_dict("records") == [{"row": 1, "source_id": NO_BP, "reject_reason": "no BP spectrum"}]
    assert "1 sources without a usable XP spectrum left out" in text
    # a clean import removes the stale report
    code, text = run_cli("data", "import", str(FIXTURES / "XP_CONTINUOUS_RAW.fits"), "--params", str(params),
                         "--out", str(out), "--redshifts", str(redshifts), "--force")  # fmt: skip
    assert code == 0, text
    assert not (tmp_path / "data" / "galaxies.rejects.csv").exists()
    assert pq.read_table(out).num_rows == 2
    # a DataLink zip (names with spaces; an XP_SAMPLED member is skipped): rejects name the member
    bundle = tmp_path / "datalink bundle.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.write(FIXTURES / "XP_CONTINUOUS_RAW_with_missing_BP.xml", "XP_CONTINUOUS-Gaia DR3 mixed.xml")
        zf.write(FIXTURES / "XP_SAMPLED_RAW_dr3int6.csv", "XP_SAMPLED-Gaia DR3 6.csv")
    code, text = run_cli(
        "data",
        "import",
        str(bundle),
        "--params",
        str(params),
        "--out",
        str(out),
        "--redshifts",
        str(redshifts),
        "--force",
    )
    assert code == 0, text
    assert pd.read_parquet(out)["source_id"].tolist() == GOOD
    report = pd.read_csv(tmp_path / "data" / "galaxies.rejects.csv")
    assert report.to_dict("records") == [{"row": 1, "source_id": NO_BP, "reject_reason": "no BP spectrum",
                                          "file": "XP_CONTINUOUS-Gaia DR3 mixed.xml"}]  # fmt: skip
