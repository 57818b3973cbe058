"""`xpz predict`: streaming batch prediction on Parquet, seed CSV and Gaia XP coefficient files.

A tiny real xpz model is logged and registered (alias `champion`) in a sqlite MLflow store in a
temporary folder through `xpz.tracking`; `models:/<name>@champion` is what the CLI loads. No mocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from xpz.spectra import FLUX_COLUMNS, flux_matrix
from xpz_models import fit_coefficients, model_predict_redshifts, write_gaia_csv, write_gaia_ecsv

OUT_COLUMNS = [
    "source_id",
    "z",
    "z_lower",
    "z_upper",
    "ood_score",
    "eligible",
    "model_name",
    "model_version",
    "reject_reason",
]


@pytest.fixture(scope="module")
def predictor(registered):
    from xpz.serving.batch import load_predictor

    return load_predictor(registered.champion, registered.tracking_uri)


@pytest.fixture(scope="module")
def keras_model(registered):
    from xpz.serving.batch import use_tracking_uri
    from xpz.tracking import load_keras_model

    with use_tracking_uri(registered.tracking_uri):
        return load_keras_model(registered.champion)


def run_cli(*args: str):
    from xpz.cli import app

    result = CliRunner().invoke(app, ["predict", *args, "--no-progress"])
    return result.exit_code, result.output  # Click >= 8.2: stdout and stderr interleaved


def cli_predict(registered, source: Path, out: Path, *extra: str):
    code, text = run_cli(str(source), "--model", registered.champion, "--out", str(out),
                         "--tracking-uri", registered.tracking_uri, *extra)  # fmt: skip
    assert code == 0, text
    return pd.read_parquet(out)


# ------------------------------------------------------------------------------ good input


def test_parquet_predictions_match_the_models_own(
    registered, dataset, small_dataset_path, keras_model, tmp_path
):
    out = cli_predict(registered, small_dataset_path, tmp_path / "pred.parquet")
    assert list(out.columns) == OUT_COLUMNS
    assert len(out) == len(dataset)
    assert (out["source_id"].to_numpy() == dataset["source_id"].to_numpy()).all()  # order kept
    assert set(out["model_name"]) == {registered.name} and set(out["model_version"]) == {registered.version}
    own = model_predict_redshifts(
        keras_model, flux_matrix(dataset)
    )  # plain model.predict, not the compiled path
    for column in ("z", "z_lower", "z_upper"):
        np.testing.assert_allclose(out[column].to_numpy(), own[column].to_numpy(), rtol=0, atol=1e-6)
    assert out["z_lower"].lt(out["z"]).all() and out["z"].lt(out["z_upper"]).all()
    assert out["z"].nunique() > len(out) // 2  # the tiny model is not constant
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_out_named_csv_gets_csv_with_the_parquet_values(registered, small_dataset_path, tmp_path):
    """`--out p.csv` once wrote Parquet bytes under a .csv name; now a CSV of the same table."""
    parquet = cli_predict(registered, small_dataset_path, tmp_path / "p.parquet")
    code, text = run_cli(str(small_dataset_path), "--model", registered.champion, "--out", str(tmp_path / "p.csv"),
                         "--tracking-uri", registered.tracking_uri)  # fmt: skip
    assert code == 0, text
    assert (tmp_path / "p.csv").read_text().startswith('"source_id","z","z_lower"')
    csv = pd.read_csv(tmp_path / "p.csv", dtype={"model_version": str})
    assert list(csv.columns) == list(parquet.columns)
    for column in ("source_id", "z", "z_lower", "z_upper", "ood_score", "eligible", "model_version"):
        np.testing.assert_array_equal(csv[column].to_numpy(), parquet[column].to_numpy(), err_msg=column)


def test_chunked_equals_unchunked_bit_for_bit(registered, small_dataset_path, predictor, tmp_path):
    from xpz.serving.batch import predict_file

    frames = []
    for chunk_size in (7, 500, 1024, 1_000_000):
        out = tmp_path / f"pred_{chunk_size}.parquet"
        predict_file(small_dataset_path, out, predictor, chunk_size=chunk_size, progress=False)
        frames.append(pd.read_parquet(out))
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], other, check_exact=True)


def test_gaia_coefficient_files_use_the_importers_conversion(registered, dataset, predictor, tmp_path):
    """Coefficients fitted with gaiaxpy's DR3 bases to generated spectra, written as the archive's
    CSV and as ECSV: predictions equal the model's on the importer's fluxes (and on the coefficients
    converted by xpz.data.xp directly)."""
    from xpz.data.io import read_gaia_xp_continuous
    from xpz.data.xp import coefficients_to_fluxes

    subset = dataset.iloc[:300]
    bp, rp = fit_coefficients(flux_matrix(subset))
    ids = subset["source_id"].to_numpy()
    fluxes = coefficients_to_fluxes(bp, rp)
    assert np.abs(fluxes - flux_matrix(subset)).max() < 0.05 * np.abs(flux_matrix(subset)).max()
    expected = predictor.predict(fluxes)
    for path in (
        write_gaia_csv(tmp_path / "xp.csv", ids, bp, rp),
        write_gaia_ecsv(tmp_path / "xp.ecsv", ids, bp, rp),
    ):
        out = cli_predict(registered, path, tmp_path / f"{path.name}.parquet", "--chunk-size", "64")
        assert (out["source_id"].to_numpy() == ids).all()
        np.testing.assert_array_equal(out["z"].to_numpy(), expected["z"].to_numpy())
        np.testing.assert_array_equal(out["z_upper"].to_numpy(), expected["z_upper"].to_numpy())
        imported = read_gaia_xp_continuous(path)  # the importer's whole-file path
        np.testing.assert_array_equal(
            predictor.predict(flux_matrix(imported))["z"].to_numpy(), out["z"].to_numpy()
        )


def test_seed_csv_and_partitioned_folder(registered, dataset, small_dataset_path, predictor, tmp_path):
    from xpz.serving.batch import predict_file

    reference = pd.read_parquet(
        predict_file(small_dataset_path, tmp_path / "ref.parquet", predictor, progress=False).out
    )
    # the seed's layout: z then 186 fluxes, no header, no source_id (row numbers become ids)
    seed = tmp_path / "seed.csv"
    dataset[["z", *FLUX_COLUMNS]].to_csv(seed, header=False, index=False)
    out = cli_predict(registered, seed, tmp_path / "seed.parquet", "--chunk-size", "333")
    assert (out["source_id"].to_numpy() == np.arange(len(dataset))).all()
    np.testing.assert_allclose(
        out["z"].to_numpy(), reference["z"].to_numpy(), rtol=0, atol=1e-6
    )  # CSV text rounds
    # a header in our names is matched by name: columns in another order predict the same
    reordered = tmp_path / "reordered.csv"
    dataset[["source_id", "z", *FLUX_COLUMNS[::-1]]].to_csv(reordered, index=False)
    out = cli_predict(registered, reordered, tmp_path / "reordered.parquet")
    assert (out["source_id"].to_numpy() == dataset["source_id"].to_numpy()).all()
    np.testing.assert_allclose(out["z"].to_numpy(), reference["z"].to_numpy(), rtol=0, atol=1e-6)
    # a folder of partitions: each file is predicted from its own first row
    folder = tmp_path / "catalogue"
    folder.mkdir()
    bounds = [0, 400, 1100, len(dataset)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        dataset.iloc[a:b].to_parquet(folder / f"part-{i}.parquet", index=False)
    whole = cli_predict(registered, folder, tmp_path / "folder.parquet")
    per_file = pd.concat(
        [
            pd.read_parquet(
                predict_file(p, tmp_path / f"{p.stem}.out.parquet", predictor, progress=False).out
            )
            for p in sorted(folder.iterdir())
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(whole, per_file, check_exact=True)
    np.testing.assert_allclose(whole["z"].to_numpy(), reference["z"].to_numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- bad input


def _parquet(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, index=False)
    return path


def _bad_inputs(dataset: pd.DataFrame, tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    small = dataset.iloc[:1500].reset_index(drop=True)
    nan = small.copy()
    nan.loc[1400, "flux_010"] = np.nan  # a late chunk (chunk size 256): rows before it are predicted
    nan_first = small.iloc[:100].copy()
    nan_first.loc[3, "flux_020"] = np.nan
    null_id = small[["source_id", *FLUX_COLUMNS]].astype({"source_id": "Int64"})
    null_id.loc[5, "source_id"] = pd.NA
    csv185 = tmp / "fluxes185.csv"
    small[list(FLUX_COLUMNS[:185])].to_csv(csv185, header=False, index=False)
    text = tmp / "text.csv"
    frame = small[["source_id", *FLUX_COLUMNS]].astype({"flux_007": object})
    frame.loc[2, "flux_007"] = "bright"
    frame.to_csv(text, index=False)
    nan_csv = tmp / "nan.csv"
    frame = small[["source_id", *FLUX_COLUMNS]].copy()
    frame.loc[9, "flux_100"] = np.inf
    frame.to_csv(nan_csv, index=False)
    empty = tmp / "empty.parquet"
    empty.write_bytes(b"")
    empty_csv = tmp / "empty.csv"
    empty_csv.write_text("")
    header_only = tmp / "header.csv"
    header_only.write_text(",".join(["source_id", *FLUX_COLUMNS]) + "\n")
    bp, rp = fit_coefficients(flux_matrix(small.iloc[:20]))
    ids = small["source_id"].to_numpy()[:20]
    gaia_noid = tmp / "xp_noid.csv"
    write_gaia_csv(gaia_noid, ids, bp, rp)
    gaia_noid.write_text(gaia_noid.read_text().replace("source_id,", "sourceid,", 1))
    named185 = tmp / "named185.csv"  # 186 columns, as the headerless layout, but flux_185 missing
    small[["z", *FLUX_COLUMNS[:185]]].to_csv(named185, index=False)
    return {
        "185 fluxes (csv)": (csv185, ["fluxes185.csv", "expected 186", "found 185"]),
        "185 named fluxes after z (csv)": (named185, ["named185.csv", "missing column(s) flux_185"]),
        "185 fluxes (parquet)": (
            _parquet(small.drop(columns=["flux_185"]), tmp / "f185.parquet"),
            ["f185.parquet", "flux_185"],
        ),
        "NaN flux (late chunk)": (
            _parquet(nan, tmp / "nan.parquet"),
            ["nan.parquet", "NaN", "rows 1400", "flux_010"],
        ),
        "NaN flux (first chunk)": (
            _parquet(nan_first, tmp / "nan_first.parquet"),
            ["nan_first.parquet", "rows 3", "flux_020"],
        ),
        "inf flux (csv)": (nan_csv, ["nan.csv", "rows 9", "flux_100"]),
        "non-numeric": (text, ["text.csv", "flux_007", "non-numeric", "rows 2", "bright"]),
        "missing source_id column": (
            _parquet(small.drop(columns=["source_id"]), tmp / "noid.parquet"),
            ["noid.parquet", "source_id"],
        ),
        "empty source_id": (
            _parquet(null_id, tmp / "nullid.parquet"),
            ["nullid.parquet", "source_id", "rows 5"],
        ),
        "missing source_id (gaia)": (gaia_noid, ["xp_noid.csv", "source_id"]),
        "empty file (parquet)": (empty, ["empty.parquet", "empty"]),
        "empty file (csv)": (empty_csv, ["empty.csv", "empty"]),
        "no rows": (header_only, ["header.csv", "no rows"]),
    }


def test_each_bad_input_gives_one_message_exit_2_and_no_output(registered, dataset, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    keep = out_dir / "kept.parquet"
    keep.write_bytes(b"previous predictions")
    for case, (path, needles) in _bad_inputs(dataset, inputs).items():
        for target in (out_dir / "pred.parquet", keep):
            code, text = run_cli(str(path), "--model", registered.champion, "--out", str(target),
                                 "--tracking-uri", registered.tracking_uri, "--chunk-size", "256")  # fmt: skip
            assert code == 2, f"{case}: exit {code}\n{text}"
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {text}"
            for needle in needles:
                assert needle in lines[0], f"{case}: {needle!r} not in {lines[0]!r}"
            assert "Traceback" not in text
        assert not (out_dir / "pred.parquet").exists(), case
        assert keep.read_bytes() == b"previous predictions", case
        assert sorted(p.name for p in out_dir.iterdir()) == ["kept.parquet"], case  # no temp files left


def test_an_out_or_pdf_folder_and_a_binary_csv_stop_before_any_work(registered, small_dataset_path, tmp_path):
    folder = tmp_path / "outdir"
    folder.mkdir()
    common = ("--model", registered.champion, "--tracking-uri", registered.tracking_uri)
    cases = {
        "--out is a folder": (("--out", str(folder)), f"--out {folder}: is a folder"),
        "--pdf is a folder": (("--out", str(tmp_path / "p.parquet"), "--pdf", str(folder)), "--pdf"),
        "--format csv on Parquet": (
            ("--out", str(tmp_path / "p.parquet"), "--format", "csv"),
            "not a text CSV",
        ),
        "--out named as FITS": (("--out", str(folder / "p.fits")), "writes Parquet, or CSV"),
    }
    for case, (extra, needle) in cases.items():
        code, text = run_cli(str(small_dataset_path), *common, *extra)
        assert code == 2 and "Traceback" not in text, f"{case}: exit {code}\n{text}"
        assert text.strip().startswith("error: ") and needle in text, f"{case}: {text}"
        assert list(folder.iterdir()) == [] and not (tmp_path / "p.parquet").exists(), case


def test_bad_coefficients_reject_the_source_not_the_file(registered, dataset, predictor, tmp_path):
    """54 RP coefficients (3rd source) and a NaN BP coefficient (8th source): those two rows get z NaN
    and a reason, the other 18 are predicted as from a clean file; --strict refuses the file."""
    bp, rp = fit_coefficients(flux_matrix(dataset.iloc[:20]))
    ids = dataset["source_id"].to_numpy()[:20]
    bad = write_gaia_csv(tmp_path / "xp_bad.csv", ids, bp, rp)
    lines = bad.read_text().splitlines()
    lines[4] = lines[4].rsplit(", ", 1)[0] + ']"'  # drop the last RP coefficient of the 3rd source
    bad.write_text("\n".join(lines) + "\n")
    bp_nan = bp.copy()
    bp_nan[7, 3] = np.nan
    text = bad.read_text().splitlines()
    write_gaia_csv(tmp_path / "nan.csv", ids, bp_nan, rp)
    text[9] = (tmp_path / "nan.csv").read_text().splitlines()[9]
    bad.write_text("\n".join(text) + "\n")
    out = cli_predict(registered, bad, tmp_path / "pred.parquet", "--chunk-size", "7")
    assert out["source_id"].tolist() == ids.tolist()
    rejected = out["reject_reason"].notna().to_numpy()
    assert np.flatnonzero(rejected).tolist() == [2, 7]
    assert out.loc[2, "reject_reason"] == "RP has 54 coefficients (55 needed)"
    assert out.loc[7, "reject_reason"] == "BP has non-finite coefficients"
    assert out.loc[rejected, "z"].isna().all()
    clean = cli_predict(
        registered, write_gaia_csv(tmp_path / "clean.csv", ids, bp, rp), tmp_path / "clean.parquet"
    )
    np.testing.assert_array_equal(out.loc[~rejected, "z"].to_numpy(), clean.loc[~rejected, "z"].to_numpy())
    code, text = run_cli(str(bad), "--model", registered.champion, "--out", str(tmp_path / "strict.parquet"),
                         "--tracking-uri", registered.tracking_uri, "--strict")  # fmt: skip
    assert code == 2 and f"source_id {ids[2]} (RP has 54 coefficients" in text and str(ids[7]) in text, text
    assert not (tmp_path / "strict.parquet").exists()


def test_unknown_alias_version_and_model_name(registered, small_dataset_path, tmp_path):
    out = tmp_path / "pred.parquet"
    cases = {
        f"models:/{registered.name}@champoin": ["'champoin'", "champion -> v1"],
        f"models:/{registered.name}/7": ["no version '7'"],
        "models:/no-such-model@champion": ["no registered model 'no-such-model'", registered.name],
        str(tmp_path / "missing.keras"): ["missing.keras", "not found"],
    }
    for model, needles in cases.items():
        code, text = run_cli(
            str(small_dataset_path),
            "--model",
            model,
            "--out",
            str(out),
            "--tracking-uri",
            registered.tracking_uri,
        )
        assert code == 2, text
        for needle in needles:
            assert needle in text, f"{model}: {needle!r} not in {text!r}"
        assert not out.exists()
    missing_store = tmp_path / "nowhere.db"
    code, text = run_cli(str(small_dataset_path), "--model", registered.champion, "--out", str(out),
                         "--tracking-uri", f"sqlite:///{missing_store}")  # fmt: skip
    assert code == 2 and "no MLflow store" in text and str(missing_store) in text
    assert not missing_store.exists() and not out.exists()  # no empty store created


def test_real_process_exit_status_and_stderr(registered, small_dataset_path, tmp_path):
    """The installed `xpz` console script, as users run it (default model from params.yaml)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.tracking_uri}
    xpz = Path(sys.executable).parent / "xpz"
    proc = subprocess.run(
        [str(xpz), "predict", str(small_dataset_path), "--out", str(tmp_path / "p.parquet"), "--no-progress",
         "--params", str(Path(__file__).parents[1] / "params.yaml")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "no registered model 'xpz-redshift'" in proc.stderr  # the params' name has no model in this store
    assert not (tmp_path / "p.parquet").exists()


def test_a_total_flux_at_or_below_zero_rejects_the_row_not_the_file(registered, dataset, tmp_path):
    """All-zero and all -1 spectra (total flux <= 0: the network's input, the spectrum over its total
    flux, is undefined) get z, z_lower, z_upper NaN, eligible false and a reject_reason, in a Parquet
    and a CSV file alike; the other rows are predicted as from a clean file; --strict refuses the file."""
    frame = dataset.iloc[:20][["source_id", *FLUX_COLUMNS]].reset_index(drop=True).copy()
    clean_path = tmp_path / "clean.parquet"
    frame.to_parquet(clean_path)
    frame.loc[3, list(FLUX_COLUMNS)] = 0.0
    frame.loc[9, list(FLUX_COLUMNS)] = -1.0
    bad_path = tmp_path / "bad.parquet"
    frame.to_parquet(bad_path)
    frame.to_csv(tmp_path / "bad.csv", index=False)
    clean = cli_predict(registered, clean_path, tmp_path / "clean_pred.parquet")
    for source in (bad_path, tmp_path / "bad.csv"):
        out = cli_predict(registered, source, tmp_path / f"{source.stem}_{source.suffix[1:]}.parquet",
                          "--chunk-size", "7")  # fmt: skip
        rejected = out["reject_reason"].notna().to_numpy()
        assert np.flatnonzero(rejected).tolist() == [3, 9], source
        assert (out.loc[rejected, "reject_reason"] == "total flux <= 0 (no usable spectrum)").all()
        assert out.loc[rejected, ["z", "z_lower", "z_upper", "ood_score"]].isna().all().all()
        assert not out.loc[rejected, "eligible"].any()
        np.testing.assert_array_equal(
            out.loc[~rejected, "z"].to_numpy(), clean.loc[~rejected, "z"].to_numpy()
        )
    code, text = run_cli(str(bad_path), "--model", registered.champion, "--out", str(tmp_path / "strict.parquet"),
                         "--tracking-uri", registered.tracking_uri, "--strict")  # fmt: skip
    assert code == 2 and "total flux <= 0" in text and str(frame.loc[9, "source_id"]) in text, text
    assert not (tmp_path / "strict.parquet").exists()
