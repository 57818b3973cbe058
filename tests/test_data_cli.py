"""The data commands end to end on a generated dataset: generate is byte-for-byte reproducible (so
a fresh clone regenerates the DVC-tracked version), the default suite passes it without warnings,
split and show write what they promise."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from conftest import copy_params
from xpz.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_generate_validate_split_show(workdir):
    params = str(copy_params(workdir))
    common = [
        "--params",
        params,
        "--profile",
        "smoke",
        "-S",
        "data.n_galaxies=1200",
        "-S",
        "data.chunk_size=500",
    ]
    invoke("data", "generate", *common)
    data = workdir / "data" / "galaxies.parquet"
    first = md5(data)
    again = runner.invoke(app, ["data", "generate", *common])
    assert again.exit_code == 2 and "--force" in again.output  # never overwrite silently
    invoke("data", "generate", *common, "--force", "--out", str(workdir / "again.parquet"))
    assert md5(workdir / "again.parquet") == first
    # an output that cannot be written: one message naming it, exit 2, nothing written
    (workdir / "a_file").write_text("not a folder")
    bad = runner.invoke(
        app, ["data", "generate", *common, "--force", "--out", str(workdir / "a_file" / "x.parquet")]
    )
    assert bad.exit_code == 2 and "a_file/x.parquet: cannot write the dataset" in bad.output
    assert "Traceback" not in bad.output and (workdir / "a_file").read_text() == "not a folder"

    out = invoke("data", "validate", "--params", params, "--profile", "smoke")
    assert "validation PASSED" in out and "WARN" not in out
    assert json.loads((workdir / "reports/validation/result.json").read_text())["rows"] == 1200
    assert (workdir / "reports/validation/index.html").exists()

    summary = json.loads(invoke("data", "split", *common))
    assert summary["counts"] == {"train": 756, "val": 324, "test": 120}
    assert (workdir / "splits/split.parquet").exists()

    out = invoke("data", "show", "--params", params, "--profile", "smoke")
    assert "1,200 galaxies" in out
    for name in ("redshift_hist.png", "example_spectra.png", "mean_spectra.png"):
        png = workdir / "reports" / "data" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_help_on_every_command():
    for cmd in (
        ["--help"],
        ["data", "--help"],
        *[["data", c, "--help"] for c in ("generate", "import", "validate", "split", "show")],
    ):
        out = invoke(*cmd)
        assert "Usage" in out


def test_validate_other_path_leaves_the_projects_output_alone(workdir, small_dataset_path):
    """`validate --path OTHER` (passing or failing) neither writes nor deletes the project's
    reports/validation/result.json (a DVC output); its report goes to reports/validation-other/<stem>/."""
    import pandas as pd

    params = str(copy_params(workdir))
    project_result = workdir / "reports/validation/result.json"
    project_result.parent.mkdir(parents=True)
    project_result.write_text('{"success": true, "rows": 1}\n')
    before = project_result.read_bytes()

    other = workdir / "other.parquet"
    other.write_bytes(small_dataset_path.read_bytes())
    out = invoke("data", "validate", "--params", params, "--profile", "smoke", "--path", str(other))
    assert "validation PASSED" in out and "reports/validation-other/other" in out
    assert json.loads((workdir / "reports/validation-other/other/result.json").read_text())["success"] is True

    bad = workdir / "bad.parquet"
    frame = pd.read_parquet(small_dataset_path)
    frame.loc[frame.index[:3], "flux_010"] = float("nan")
    frame.to_parquet(bad)
    result = runner.invoke(
        app, ["data", "validate", "--params", params, "--profile", "smoke", "--path", str(bad)]
    )
    assert result.exit_code in (1, 2), result.output
    assert project_result.read_bytes() == before  # untouched by both
