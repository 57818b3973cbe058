"""`xpz`: command-line entry point. Thin: parse options, load params once, call the library.

Errors users can fix (bad input files, invalid params) print one message and exit with status 2;
a failed validation exits with status 1 after printing its summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from xpz.env import quiet_telemetry

quiet_telemetry()

from xpz.cli_common import ParamsOpt, ProfileOpt, SetOpt, config_from_options, fail, guarded  # noqa: E402

app = typer.Typer(
    help="xpz: galaxy redshifts from Gaia BP/RP (XP) spectra with a 1-D CNN, tracked with MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset commands: generate, import, validate, split, show.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("generate")
@guarded()
def data_generate(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Output Parquet (default: data.path).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing dataset.")] = False,
) -> None:
    """Generate the embedded synthetic Gaia XP galaxy dataset (deterministic for data.seed)."""
    from xpz.data_stages import generate_dataset

    cfg = config_from_options(params, profile, set_)
    path = out or cfg.data.path
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it")
    rows = generate_dataset(cfg.data, path)
    typer.echo(f"wrote {rows:,} galaxies to {path}")


@data_app.command("import")
@guarded()
def data_import(
    source: Annotated[Path, typer.Argument(help="Seed CSV (z + 186 fluxes), our Parquet, or Gaia XP continuous CSV/ECSV.")],
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, csv, parquet or gaia.")] = "auto",
    redshifts: Annotated[Optional[Path], typer.Option(help="Redshift table (source_id, z) for Gaia XP input.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output Parquet (default: data.path).")] = None,
) -> None:
    """Import real spectra into the dataset schema; the file is validated before anything is written."""
    from xpz.data_stages import import_dataset

    cfg = config_from_options(params, profile)
    path = out or cfg.data.path
    rows = import_dataset(source, path, cfg.validation, fmt=fmt, redshifts=redshifts)
    typer.echo(f"imported {rows:,} galaxies from {source} to {path}")


@data_app.command("validate")
@guarded()
def data_validate(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    path: Annotated[Optional[Path], typer.Option(help="Dataset Parquet (default: data.path).")] = None,
) -> None:
    """Run the Great Expectations suite; exit 1 with a readable summary if the dataset fails it."""
    from xpz.data_stages import validate_dataset

    cfg = config_from_options(params, profile)
    report = validate_dataset(path or cfg.data.path, cfg.validation)
    typer.echo(report.summary())
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
    from xpz.data_stages import split_dataset

    cfg = config_from_options(params, profile, set_)
    summary = split_dataset(cfg.data.path, cfg.split)
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("show")
@guarded()
def data_show(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    path: Annotated[Optional[Path], typer.Option(help="Dataset Parquet (default: data.path).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the PNG figures go.")] = Path("reports/data"),
) -> None:
    """Counts, redshift statistics and figures (redshift histogram, random spectra, mean spectra per z range)."""
    from xpz.describe import plot_dataset, redshift_statistics
    from xpz.io import read_dataset
    from xpz.spectra import TARGET_COLUMN

    cfg = config_from_options(params, profile)
    source = path or cfg.data.path
    df = read_dataset(source)
    stats = redshift_statistics(df[TARGET_COLUMN].to_numpy())
    typer.echo(f"{source}: {len(df):,} galaxies, 186 fluxes each")
    for key, value in stats.items():
        typer.echo(f"  z {key:<9} {value:.4f}" if key != "count" else f"  z {key:<9} {int(value)}")
    for figure in plot_dataset(df, out_dir):
        typer.echo(f"  figure: {figure}")


# The other command groups live beside their concerns; this is the one place that wires them.
from xpz import cli_model  # noqa: E402  (tune, train, evaluate, run, models, promote)
from xpz.cli_predict import predict  # noqa: E402  (streaming batch prediction)
from xpz.cli_schedule import schedule_app  # noqa: E402  (scheduled retraining)

cli_model.register(app)
app.command("predict")(predict)
app.add_typer(schedule_app, name="schedule")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
