"""Great Expectations suite: passes clean data, names failures with ids, keeps warnings non-fatal,
and writes Data Docs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_frame
from xpz.config import ValidateConfig
from xpz.data.validation import row_summary, validate_frame


@pytest.fixture(scope="module")
def cfg():
    return ValidateConfig(min_rows=100)


def test_clean_frame_passes(cfg):
    report = validate_frame(random_frame(500), cfg)
    assert report.success, report.summary()
    assert report.warnings == (), report.summary()  # distribution checks run and pass
    assert report.n_expectations == 15
    assert "PASSED" in report.summary()


def test_failures_name_expectation_column_count_and_ids(cfg, tmp_path):
    df = random_frame(500)
    df.loc[[3, 4], "flux_100"] = np.nan
    df.loc[9, "z"] = 0.75
    df.loc[11, "flux_000"] = 1e6
    report = validate_frame(df, cfg, source="bad.parquet", report_dir=tmp_path / "docs")
    assert not report.success
    by_column = {f.column: f for f in report.failures}
    assert set(by_column) == {"n_nonfinite", "z", "flux_max"}
    assert by_column["n_nonfinite"].unexpected_count == 2
    assert set(by_column["n_nonfinite"].examples) == {df.loc[3, "source_id"], df.loc[4, "source_id"]}
    assert "flux_100" in by_column["n_nonfinite"].detail
    assert by_column["z"].examples == (df.loc[9, "source_id"],)
    assert "flux_000" in by_column["flux_max"].detail
    text = report.summary()
    assert "bad.parquet" in text and "FAIL" in text
    assert report.docs_path is not None and report.docs_path.exists()


def test_data_docs_go_only_to_the_report_folder(cfg, tmp_path, monkeypatch):
    """GX's ephemeral context has a default site in a temporary folder; building it too left one
    /tmp/tmpXXXX folder behind per validation (xpz data validate, every pipeline run)."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report = validate_frame(random_frame(500), cfg, report_dir=tmp_path / "docs")
    assert report.success, report.summary()
    assert (tmp_path / "docs" / "index.html").exists()
    assert list(scratch.iterdir()) == []


def test_distribution_checks_only_warn(cfg):
    df = random_frame(500)
    df["z"] = 0.55  # valid range, implausible distribution
    report = validate_frame(df, cfg)
    assert report.success
    assert {w.expectation for w in report.warnings} >= {"expect_column_mean_to_be_between"}


def test_schema_problems(cfg):
    df = random_frame(500)
    assert not validate_frame(df.drop(columns="flux_050"), cfg).success
    assert not validate_frame(df.iloc[:50], cfg).success  # below min_rows
    assert not validate_frame(df.iloc[:0], cfg).success


def test_row_summary_counts_nonfinite():
    df = random_frame(5)
    df.loc[0, "flux_001"] = np.inf
    df.loc[0, "flux_002"] = np.nan
    s = row_summary(df)
    assert s["n_nonfinite"].tolist() == [2, 0, 0, 0, 0]
    assert s.loc[1, "flux_min"] == pytest.approx(df.iloc[1, 2:].min())
