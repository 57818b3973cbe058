"""`xpz data ...`: generate, import, validate, split, show (options -> `xpz.data.stages`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from xpz.cli.common import (
    ParamsOpt,
    ProfileOpt,
    SetOpt,
    check_output,
    config_from_options,
    fail,
    guarded,
)

data_app = typer.Typer(
    help="Dataset commands: generate, import, validate, split, show.", no_args_is_help=True
)


@data_app.command("generate")
@guarded()
def data_generate(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output Parquet (default: data.path).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing dataset.")] = False,
) -> None:
    """Generate the embedded synthetic Gaia XP galaxy dataset (deterministic for data.seed)."""
    from xpz.data.stages import generate_dataset

    cfg = config_from_options(params, profile, set_)
    path = out or cfg.data.path
    # before generating (minutes at the default size), not at the final rename
    check_output(path, "--out" if out else "data.path", "the dataset", force=force)
    try:
        rows = generate_dataset(cfg.data, path)
    except OSError as err:  # an output folder that cannot be written (no partial file: atomic_path)
        fail(f"{path}: cannot write the dataset: {err.strerror or err}")
    typer.echo(f"wrote {rows:,} galaxies to {path}")


@data_app.command("import")
@guarded()
def data_import(
    source: Annotated[
        Path,
        typer.Argument(
            help="Seed CSV (z + 186 fluxes), our Parquet, or Gaia XP continuous (CSV, ECSV, FITS, VOTable, Parquet; gzipped or not)."
        ),
    ],
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, csv, parquet or gaia.")] = "auto",
    redshifts: Annotated[
        Path | None, typer.Option(help="Redshift table (source_id, z) for Gaia XP input.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output Parquet (default: data.path).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing dataset.")] = False,
) -> None:
    """Import real spectra into the dataset schema; the file is validated before anything is written."""
    from xpz.data.stages import import_dataset, rejects_path

    cfg = config_from_options(params, profile, set_)
    path = out or cfg.data.path
    option = "--out" if out else "data.path"
    check_output(path, option, "the dataset", force=force)  # before reading and validating the input
    check_output(rejects_path(path), option, "the rejects report", force=True)
    rows = import_dataset(source, path, cfg.validation, fmt=fmt, redshifts=redshifts)
    typer.echo(f"imported {rows:,} galaxies from {source} to {path}")
    if rejects_path(path).exists():  # issue 11: sources without a usable XP spectrum are reported
        n = sum(1 for _ in rejects_path(path).open()) - 1
        typer.echo(f"{n:,} sources without a usable XP spectrum left out: see {rejects_path(path)}")


@data_app.command("validate")
@guarded()
def data_validate(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    path: Annotated[Path | None, typer.Option(help="Dataset Parquet (default: data.path).")] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the report goes (default: validate.report_dir for data.path, "
            "reports/validation-other/<stem> for any other --path)."
        ),
    ] = None,
) -> None:
    """Run the Great Expectations suite; exit 1 with a readable summary if the dataset fails it.

    Only the project's dataset (data.path) writes validate.report_dir/result.json, the DVC output the
    split stage depends on; another --path reports elsewhere and leaves the project's outputs alone."""
    from xpz.data.stages import other_report_dir, validate_dataset

    cfg = config_from_options(params, profile, set_)
    source = path or cfg.data.path
    if report_dir is None and Path(source).resolve() != Path(cfg.data.path).resolve():
        report_dir = other_report_dir(source)
    check_output(  # before the suite runs, not when GX writes its Data Docs
        Path(report_dir or cfg.validation.report_dir),
        "--report-dir" if report_dir else "validate.report_dir",
        "the validation report",
        folder=True,
    )
    report = validate_dataset(source, cfg.validation, report_dir=report_dir)
    typer.echo(report.summary())
    typer.echo(f"report: {report_dir or cfg.validation.report_dir}")
    if not report.success:
        raise typer.Exit(1)


@data_app.command("split")
@guarded()
def data_split(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write the deterministic, z-stratified train/val/test split and its digests."""
    from xpz.data.stages import split_dataset

    cfg = config_from_options(params, profile, set_)
    check_output(cfg.split.path, "split.path", "the split", force=True)  # before reading the dataset
    check_output(cfg.split.digests, "split.digests", "the split digests", force=True)
    summary = split_dataset(cfg.data.path, cfg.split)
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("show")
@guarded()
def data_show(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    path: Annotated[Path | None, typer.Option(help="Dataset Parquet (default: data.path).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the PNG figures go.")] = Path("reports/data"),
) -> None:
    """Counts, redshift statistics and figures (redshift histogram, random spectra, mean spectra per z range)."""
    from xpz.data.describe import plot_dataset, redshift_statistics
    from xpz.data.io import read_dataset
    from xpz.spectra import TARGET_COLUMN

    cfg = config_from_options(params, profile, set_)
    source = path or cfg.data.path
    check_output(out_dir, "--out-dir", "the figures", folder=True)  # before reading the dataset
    df = read_dataset(source)
    stats = redshift_statistics(df[TARGET_COLUMN].to_numpy())
    typer.echo(f"{source}: {len(df):,} galaxies, 186 fluxes each")
    for key, value in stats.items():
        typer.echo(f"  z {key:<9} {value:.4f}" if key != "count" else f"  z {key:<9} {int(value)}")
    for figure in plot_dataset(df, out_dir):
        typer.echo(f"  figure: {figure}")
