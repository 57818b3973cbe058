"""`xpz predict INPUT --model models:/<name>@champion --out predictions.parquet`: streaming batch prediction.

Thin: options -> `xpz.serving.batch.predict_file`. Bad input (a file, its rows, an unknown model or
alias) prints one message and exits with status 2, leaving no output file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xpz.cli.common import guarded, require_store
from xpz.config import load_config
from xpz.data.stream import DEFAULT_CHUNK_SIZE, FORMATS


@guarded()
def predict(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="Spectra: our Parquet (source_id + flux_000..flux_185), the seed's CSV (186 fluxes, "
            "optionally after z), Gaia XP continuous mean spectra (55 BP + 55 RP coefficients) as CSV, ECSV, FITS, VOTable or "
            "Parquet, gzipped or not, a DataLink zip, or a folder of such files (read in path order).",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/model, an MLflow "
            "model folder or a .keras file (default: models:/<tracking.registered_model>@champion).",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output Parquet, or CSV for a name ending .csv (written atomically)."
        ),
    ] = Path("predictions.parquet"),
    fmt: Annotated[str, typer.Option("--format", help=f"Input format: {', '.join(FORMATS)}.")] = "auto",
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", min=1, help="Spectra read per chunk (bounds memory).")
    ] = DEFAULT_CHUNK_SIZE,
    params: Annotated[Path, typer.Option("--params", help="Parameters file (tracking section).")] = Path(
        "params.yaml"
    ),
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else tracking.uri)."
        ),
    ] = None,
    pdf: Annotated[
        Path | None,
        typer.Option(
            "--pdf",
            help="Also write each spectrum's p(z) to this qp HDF5 file (qp.read reads it; "
            "ancillary columns source_id, z, z_lower, z_upper, ood_score, eligible).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 2, writing nothing, if any source has no usable XP spectrum."),
    ] = False,
) -> None:
    """Predict redshifts (z, its 68% interval, ood_score and the eligible flag) for every spectrum of
    INPUT, streaming in chunks; --pdf also writes each p(z) in qp's format."""
    from xpz.serving.batch import default_tracking_uri, predict_file

    configured_uri = None
    registered = "xpz-redshift"
    if params.exists():
        cfg = load_config(params)
        configured_uri, registered = cfg.tracking.uri, cfg.tracking.registered_model
    uri = tracking_uri or default_tracking_uri(configured_uri)
    from_store = model is None or model.startswith(("models:/", "runs:/"))
    if uri and from_store:  # the model is read from the store: never create an empty one
        require_store(uri)
    result = predict_file(
        source, out, model or f"models:/{registered}@champion", fmt=fmt, chunk_size=chunk_size,
        progress=progress, tracking_uri=uri, strict=strict, pdf=pdf,
    )  # fmt: skip
    version = f" v{result.model_version}" if result.model_version else ""
    typer.echo(
        f"wrote {result.rows:,} predictions ({result.model_name}{version}) to {result.out}"
        + (f" and their p(z) to {pdf}" if pdf else "")
        + f" in {result.seconds:.1f} s ({result.spectra_per_s:,.0f} spectra/s; model loaded in {result.load_seconds:.1f} s)"
    )
    if result.rejected:  # issue 11: rejected sources keep their row (z NaN, reject_reason)
        typer.echo(f"{result.rejected:,} of {result.rows:,} sources not predicted (no usable XP spectrum): "
                   "z is NaN and reject_reason says why")  # fmt: skip
    for path, what in result.skipped:
        typer.echo(f"skipped {path.name}: {what}")
