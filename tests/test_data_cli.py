"""The data commands end to end on a generated dataset: generate is byte-for-byte reproducible (so
a fresh clone regenerates the DVC-tracked version), the default suite passes it without warnings,
split and show write what they promise."""

from __future__ import annotations

import hashlib
import json

import pytest
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


def refused(result, *words):
    """One `error: ...` message naming `words`, exit 2, no traceback."""
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert output.startswith("error: ") and len(errors) == 1, output
    assert all(w in output for w in words), f"{words} not in {output!r}"


def test_import_refuses_an_existing_dataset_without_force(workdir, small_dataset_path):
    """Like `data generate`: an existing output is replaced only with --force (before: silently)."""
    params = str(copy_params(workdir))
    common = ["--params", params, "--profile", "smoke"]
    source = str(small_dataset_path)
    out = workdir / "data" / "galaxies.parquet"
    out.parent.mkdir()
    out.write_bytes(b"an older dataset")
    refused(runner.invoke(app, ["data", "import", source, *common, "--out", str(out)]), str(out), "--force")
    assert out.read_bytes() == b"an older dataset"
    refused(runner.invoke(app, ["data", "import", source, *common]), "data/galaxies.parquet", "--force")
    assert out.read_bytes() == b"an older dataset"  # data.path, the default output, too
    invoke("data", "import", source, *common, "--out", str(out), "--force")
    assert out.read_bytes()[:4] == b"PAR1" and "1,500 galaxies" in invoke("data", "show", *common)


def _a_file_and_a_folder(workdir):
    (workdir / "a_file").write_text("not a folder")
    (workdir / "a_folder").mkdir()
    (workdir / "a_folder" / "kept.txt").write_text("kept")


# (label, argv, the library call that must not run, words of the message)
OUTPUT_CASES = [
    ("generate --out folder", ["data", "generate", "--force", "--out", "a_folder"],
     "xpz.data.stages.generate_dataset", ["--out a_folder: is a folder"]),
    ("generate --out under a file", ["data", "generate", "--out", "a_file/x.parquet"],
     "xpz.data.stages.generate_dataset", ["a_file/x.parquet: cannot write the dataset", "a_file is not a folder"]),
    ("generate data.path folder", ["data", "generate", "--force", "-S", "data.path=a_folder"],
     "xpz.data.stages.generate_dataset", ["data.path a_folder: is a folder"]),
    ("import --out folder", ["data", "import", "{dataset}", "--force", "--out", "a_folder"],
     "xpz.data.stages.import_dataset", ["--out a_folder: is a folder"]),
    ("import --out under a file", ["data", "import", "{dataset}", "--out", "a_file/sub/x.parquet"],
     "xpz.data.stages.import_dataset", ["a_file/sub/x.parquet: cannot write the dataset"]),
    ("show --out-dir file", ["data", "show", "--path", "{dataset}", "--out-dir", "a_file"],
     "xpz.data.io.read_dataset", ["--out-dir a_file: is a file"]),
    ("validate --report-dir file", ["data", "validate", "--path", "{dataset}", "--report-dir", "a_file"],
     "xpz.data.stages.validate_dataset", ["--report-dir a_file: is a file"]),
    ("split split.path folder", ["data", "split", "-S", "split.path=a_folder"],
     "xpz.data.stages.split_dataset", ["split.path a_folder: is a folder"]),
]  # fmt: skip


@pytest.mark.parametrize("label,argv,work,words", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_an_unwritable_output_is_refused_before_any_work(
    workdir, small_dataset_path, monkeypatch, label, argv, work, words
):
    """An output that is a folder (or a file where a folder is needed, or a path under a file): one
    message, exit 2, before the command reads or generates anything (before: a traceback, or a
    message only after generating the whole dataset), and nothing written."""
    params = str(copy_params(workdir))
    _a_file_and_a_folder(workdir)

    def no_work(*args, **kwargs):
        raise AssertionError(f"{label}: {work} ran before the output was checked")

    monkeypatch.setattr(work, no_work)
    argv = [str(small_dataset_path) if a == "{dataset}" else a for a in argv]
    refused(runner.invoke(app, [*argv, "--params", params, "--profile", "smoke"]), *words)
    assert (workdir / "a_file").read_text() == "not a folder"
    assert [p.name for p in (workdir / "a_folder").iterdir()] == ["kept.txt"]


def test_set_overrides_reach_validate_show_and_import(workdir, small_dataset_path):
    """-S on the data commands that read parameters: validate (validate.*), show and import (data.path)."""
    params = str(copy_params(workdir))
    common = ["--params", params, "--profile", "smoke", "-S", f"data.path={small_dataset_path}"]
    assert "validation PASSED" in invoke("data", "validate", *common)
    failed = runner.invoke(app, ["data", "validate", *common, "-S", "validate.min_rows=2000"])
    assert failed.exit_code == 1 and "validation FAILED" in failed.output, failed.output
    assert "expect_table_row_count_to_be_between" in failed.output
    assert f"{small_dataset_path}: 1,500 galaxies" in invoke("data", "show", *common)
    target = workdir / "elsewhere" / "imported.parquet"
    out = invoke("data", "import", str(small_dataset_path), *common[:4], "-S", f"data.path={target}")
    assert f"to {target}" in out and target.read_bytes()[:4] == b"PAR1"
    refused(
        runner.invoke(app, ["data", "validate", *common, "-S", "validate.no_such_knob=1"]),
        "validate.no_such_knob: unknown key",
    )
