"""`xpz`: the command-line entry point. Thin: parse options, load params once, call the library.

Modules: `common` (the error guard, params/profile/override options), `data` (`xpz data ...`),
`model` (tune, train, evaluate, run, models, promote), `predict` (streaming batch prediction),
`schedule` (scheduled retraining with Prefect). May import everything in xpz; nothing imports it
except the flows' command lines. Errors users can fix (bad input files, invalid params) print one
message and exit with status 2; a failed validation exits with status 1 after printing its summary.
"""

from __future__ import annotations

import sys

import typer

from xpz.env import quiet_telemetry

quiet_telemetry()

from xpz.cli import model as cli_model  # noqa: E402  (tune, train, evaluate, run, models, promote)
from xpz.cli.data import data_app  # noqa: E402  (generate, import, validate, split, show)
from xpz.cli.predict import predict  # noqa: E402  (streaming batch prediction)
from xpz.cli.schedule import schedule_app  # noqa: E402  (scheduled retraining)

app = typer.Typer(
    help="xpz: galaxy redshifts from Gaia BP/RP (XP) spectra with a 1-D CNN, tracked with MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
cli_model.register(app)
app.command("predict")(predict)
app.add_typer(schedule_app, name="schedule")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
